"""Export and corpus-import pages: who may see them, the prefilled form, start → progress → download, uploads."""
import json

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from collection.exporting import export_execute, export_start
from collection.models import Dialogue, Export, Import, SeedSet
from tests.factories import make_dialogue, make_seed_set

PAGES = ["/exports/", "/exports/new/", "/exports/{id}/", "/exports/{id}/progress", "/exports/{id}/download",
         "/imports/corpus/"]


@pytest.fixture
def done_export(db, artifacts):
    seed_set = make_seed_set("garden")
    make_dialogue(seed_set, status="approved")
    make_dialogue(seed_set, status="approved", topic="<script>alert(1)</script>",
                  turns=[{"role": "human", "text": "<img src=x onerror=alert(1)>"}, {"role": "ai", "text": "ok"}])
    return export_execute(export_start(fmt="openai", spec={"dedupe": False}, enqueue=False).pk)


@pytest.mark.parametrize("page", PAGES)
def test_it_sends_anonymous_visitors_to_the_login_page(client, done_export, page):
    response = client.get(page.format(id=done_export.pk))
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


@pytest.mark.parametrize("page", PAGES)
def test_it_refuses_raters_and_outsiders(as_rater, as_outsider, done_export, page):
    for client in (as_rater, as_outsider):
        assert client.get(page.format(id=done_export.pk)).status_code == 403


@pytest.mark.parametrize("page", PAGES)
def test_it_lets_reviewers_and_admins_in(as_reviewer, as_admin, done_export, page):
    for client in (as_reviewer, as_admin):
        assert client.get(page.format(id=done_export.pk)).status_code == 200


@pytest.mark.parametrize("page", ["/exports/new/", "/imports/corpus/"])
def test_it_refuses_posts_from_the_wrong_people(client, as_rater, db, page):
    assert client.post(page, {}).status_code == 302
    assert as_rater.post(page, {}).status_code == 403
    assert not Export.objects.exists() and not Import.objects.exists()


def test_it_lists_exports_with_their_state(as_reviewer, done_export):
    page = as_reviewer.get("/exports/").content.decode()
    assert f'href="/exports/{done_export.pk}/"' in page
    assert done_export.sha256[:12] in page and "succeeded" in page
    assert f"/exports/{done_export.pk}/download" in page


def test_it_prefills_the_form_from_the_review_queue_link(as_reviewer, db):
    seed_set = make_seed_set("garden")
    make_dialogue(seed_set, status="approved")
    make_dialogue(seed_set, status="undecided")
    page = as_reviewer.get(f"/exports/new/?seed_set={seed_set.pk}&flag=none&min_turns=2&q=basil").content.decode()
    assert f'<option value="{seed_set.pk}" selected>garden</option>' in page
    assert '<option value="none" selected>no flag</option>' in page
    assert 'name="min_turns" value="2"' in page and 'value="basil"' in page
    # No status in the queue's link means the queue showed every status: export exactly that.
    assert '<option value="all" selected>all</option>' in page
    assert "match <strong>2</strong> dialogues" in page


def test_it_defaults_to_approved_without_a_query(as_reviewer, db):
    page = as_reviewer.get("/exports/new/").content.decode()
    assert '<option value="approved" selected>approved</option>' in page
    assert 'name="dedupe" id="id_dedupe" checked' in page and 'name="include_flagged" id="id_include_flagged">' in page


def test_it_starts_an_export_and_shows_it_through_to_the_download(
        as_reviewer, reviewer, artifacts, eager, django_capture_on_commit_callbacks):
    seed_set = make_seed_set("garden")
    make_dialogue(seed_set, status="approved")
    with django_capture_on_commit_callbacks(execute=True):
        response = as_reviewer.post("/exports/new/", {
            "format": "sharegpt", "seed_set": str(seed_set.pk), "status": "approved", "dedupe": "on",
            "val_fraction": "0", "shuffle": "on", "shuffle_seed": "3"})
    export = Export.objects.get()
    assert response.status_code == 302 and response.url == f"/exports/{export.pk}/"
    assert export.created_by == reviewer and export.status == "succeeded"
    assert export.spec["seed_set"] == seed_set.pk and export.spec["shuffle_seed"] == 3
    page = as_reviewer.get(f"/exports/{export.pk}/").content.decode()
    assert export.sha256 in page and f"/exports/{export.pk}/download" in page
    assert "Written in all" in page and "shuffle_seed" in page
    progress = as_reviewer.get(f"/exports/{export.pk}/progress").json()
    assert progress == {"status": "succeeded", "progress": 1, "total": 1, "finished": True}
    download = as_reviewer.get(f"/exports/{export.pk}/download")
    assert download["Content-Disposition"].startswith("attachment")
    body = b"".join(download.streaming_content)
    with default_storage.open(export.path, "rb") as handle:
        assert body == handle.read()
    assert json.loads(body)["conversations"][0]["from"] == "human"


def test_it_shows_form_errors_and_starts_nothing(as_reviewer, db):
    response = as_reviewer.post("/exports/new/", {"format": "openai", "status": "approved", "val_fraction": "2",
                                                  "shuffle_seed": "0"})
    assert response.status_code == 200
    assert "val_fraction" in response.content.decode()
    assert not Export.objects.exists()


def test_it_polls_a_running_export(as_reviewer, db):
    export = Export.objects.create(format="openai", spec={}, status="running", total=10, progress=4)
    assert as_reviewer.get(f"/exports/{export.pk}/progress").json() == {
        "status": "running", "progress": 4, "total": 10, "finished": False}
    page = as_reviewer.get(f"/exports/{export.pk}/").content.decode()
    assert "collection/export.js" in page and 'data-finished="false"' in page


def test_it_has_no_download_before_an_export_succeeds(as_reviewer, db):
    export = Export.objects.create(format="openai", spec={}, status="running")
    assert as_reviewer.get(f"/exports/{export.pk}/download").status_code == 404
    assert as_reviewer.get("/exports/999999/").status_code == 404


def test_it_escapes_what_it_shows(as_reviewer, done_export):
    Export.objects.filter(pk=done_export.pk).update(error="<script>alert(1)</script>", spec={
        **done_export.spec, "q": "<img src=x onerror=alert(1)>"})
    page = as_reviewer.get(f"/exports/{done_export.pk}/").content.decode()
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    assert "<img src=x" not in page


# --- corpus import upload ------------------------------------------------------------------------------------

def upload(name, content):
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def test_it_imports_an_uploaded_corpus(as_reviewer, reviewer, artifacts, eager, django_capture_on_commit_callbacks):
    content = b'{"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello!"}]}\n'
    with django_capture_on_commit_callbacks(execute=True):
        response = as_reviewer.post("/imports/corpus/", {"file": upload("chats.jsonl", content), "format": "sharegpt",
                                                         "seed_set": "uploaded"})
    assert response.status_code == 302 and response.url == "/imports/corpus/"
    job = Import.objects.get()
    assert job.status == "succeeded", job.error
    assert job.created_by == reviewer and job.filename == "chats.jsonl"
    assert Dialogue.objects.get().source == "import:sharegpt:chats.jsonl"
    page = as_reviewer.get("/imports/corpus/").content.decode()
    assert "chats.jsonl" in page and "succeeded" in page and f"/review/?seed_set={job.seed_set_id}" in page


def test_it_shows_a_failed_upload_with_its_record_and_escapes_it(
        as_reviewer, artifacts, eager, django_capture_on_commit_callbacks):
    content = b'{"messages": [{"role": "<script>alert(1)</script>", "content": "x"}]}\n'
    with django_capture_on_commit_callbacks(execute=True):
        as_reviewer.post("/imports/corpus/", {"file": upload("evil.jsonl", content), "format": "openai",
                                              "seed_set": "evil"})
    job = Import.objects.get()
    assert job.status == "failed" and "evil.jsonl:line 1: messages[0].role" in job.error
    page = as_reviewer.get("/imports/corpus/").content.decode()
    assert "evil.jsonl:line 1" in page
    assert "<script>alert(1)" not in page
    assert not SeedSet.objects.exists()


def test_it_refuses_an_upload_over_the_limit(as_reviewer, artifacts, settings):
    settings.MAX_UPLOAD_MB = 1
    response = as_reviewer.post("/imports/corpus/", {"file": upload("big.jsonl", b"x" * (1024 * 1024 + 1)),
                                                     "format": "openai", "seed_set": "big"})
    assert response.status_code == 200 and "1 MB upload limit" in response.content.decode()
    assert not Import.objects.exists()


def test_it_asks_for_every_upload_field(as_reviewer, db):
    response = as_reviewer.post("/imports/corpus/", {"format": "openai"})
    page = response.content.decode()
    assert response.status_code == 200 and "file:" in page and "seed_set:" in page
    assert not Import.objects.exists()
