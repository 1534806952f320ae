"""Seed pages: the list with the upload form, a seed set's page and an import's status page; who may see them."""
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from collection.models import Import, Seed, SeedSet
from tests.factories import make_endpoint, make_seed_set, make_seeds, make_template

PAGES = ["/seeds/", "/seeds/{set}/", "/imports/{job}/"]


@pytest.fixture
def garden(db):
    seed_set = make_seed_set("garden", source="quora", tags=["plants"])
    make_seeds(seed_set, ["How do I keep basil alive indoors?", "<script>alert('seed')</script> why?"])
    job = Import.objects.create(kind=Import.Kind.SEEDS, seed_set=seed_set, seed_set_name="garden", filename="g.txt",
                                status="succeeded", imported=2, rows_read=3, bad=1,
                                report=[{"where": "g.txt:line 2", "error": "invalid UTF-8 <b>x</b>"}])
    return seed_set, job


def urls(garden):
    seed_set, job = garden
    return [p.format(set=seed_set.pk, job=job.pk) for p in PAGES]


def upload(client, content, name="seeds.txt", **fields):
    data = {"file": SimpleUploadedFile(name, content), "seed_set": "uploaded", "column": "", "format": "",
            "source": "", "tags": ""}
    data.update(fields)
    return client.post("/seeds/", data)


# --- who may see them --------------------------------------------------------------------------------------
def test_it_sends_anonymous_visitors_to_the_login_page(garden):
    for url in urls(garden):
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"/accounts/login/?next={url}", url


def test_it_refuses_raters_and_people_without_a_role(garden, as_rater, as_outsider):
    for client in (as_rater, as_outsider):
        for url in urls(garden):
            assert client.get(url).status_code == 403, url


def test_it_shows_the_pages_to_reviewers_and_admins(garden, as_reviewer, as_admin):
    for client in (as_reviewer, as_admin):
        for url in urls(garden):
            assert client.get(url).status_code == 200, url


def test_it_refuses_an_upload_from_a_rater_or_anonymous(db, as_rater, artifacts):
    assert upload(as_rater, b"one\n").status_code == 403
    assert upload(Client(), b"one\n").status_code == 302
    assert Import.objects.count() == 0
    assert not artifacts.exists() or not any(artifacts.rglob("*.txt"))


def test_it_answers_404_for_a_missing_set_or_import(as_reviewer):
    assert as_reviewer.get("/seeds/999999/").status_code == 404
    assert as_reviewer.get("/imports/999999/").status_code == 404


# --- the list and the upload -------------------------------------------------------------------------------
def test_it_lists_seed_sets_with_their_counts(garden, as_reviewer):
    make_seed_set("empty-set")

    page = as_reviewer.get("/seeds/").content.decode()

    assert '<a href="/seeds/%d/">garden</a>' % garden[0].pk in page
    assert "<td>quora</td><td>plants</td>\n      <td>2</td><td>0</td><td>0</td>" in page
    assert "empty-set" in page
    assert 'id="seed-upload-form"' in page


def test_it_imports_an_upload_and_shows_its_status(db, reviewer, as_reviewer, artifacts, eager,
                                                    django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(as_reviewer, b"question,topic\nWhy is the sky blue?,sky\nwhy is the  sky blue?,sky\n",
                          name="sky.csv", column="question", source="mine", tags="a, b")

    job = Import.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/imports/{job.pk}/"
    assert (job.status, job.imported, job.duplicates, job.created_by) == ("succeeded", 1, 1, reviewer)
    assert job.path.startswith("imports/") and job.path.endswith("/sky.csv")
    assert default_storage.exists(job.path)
    seed_set = SeedSet.objects.get(name="uploaded")
    assert (seed_set.source, seed_set.tags) == ("mine", ["a", "b"])
    assert list(Seed.objects.values_list("text", "source_ref")) == [("Why is the sky blue?", "sky.csv:line 2")]
    page = as_reviewer.get(f"/imports/{job.pk}/").content.decode()
    assert "succeeded" in page and "http-equiv=\"refresh\"" not in page
    assert f'href="/runs/new/?seed_set={seed_set.pk}"' in page


def test_it_shows_a_failed_upload_with_the_located_error(db, as_reviewer, artifacts, eager,
                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        upload(as_reviewer, b"fine\n\xff\xfe\n", name="broken.txt")

    job = Import.objects.get()
    assert job.status == "failed"
    page = as_reviewer.get(f"/imports/{job.pk}/").content.decode()
    assert "broken.txt:line 2: invalid UTF-8" in page
    assert "Nothing was imported" in page
    assert not SeedSet.objects.filter(name="uploaded").exists()


def test_it_refuses_an_upload_over_the_size_limit(db, as_reviewer, artifacts, settings):
    settings.MAX_UPLOAD_MB = 1

    response = upload(as_reviewer, b"seed\n" * 300_000, name="big.txt")

    assert response.status_code == 413
    assert "uploads are limited to 1 MB (MAX_UPLOAD_MB)" in response.content.decode()
    assert Import.objects.count() == 0
    assert not artifacts.exists() or not any(artifacts.rglob("big*"))


def test_it_explains_a_missing_set_name(db, as_reviewer, artifacts):
    response = upload(as_reviewer, b"seed\n", seed_set="")

    assert response.status_code == 400
    assert "Seed set: This field is required." in response.content.decode()
    assert Import.objects.count() == 0


# --- the seed set page -------------------------------------------------------------------------------------
def test_it_shows_a_seed_set_with_seeds_imports_and_runs(garden, as_reviewer):
    from collection.models import GenerationRun

    seed_set, job = garden
    run = GenerationRun.objects.create(seed_set=seed_set, endpoint=make_endpoint(), model="fake-model",
                                       template=make_template(), name="first run")
    failed = Import.objects.create(kind=Import.Kind.SEEDS, seed_set_name="garden", filename="late.csv",
                                   status="failed", error="late.csv:line 9: invalid UTF-8")

    page = as_reviewer.get(f"/seeds/{seed_set.pk}/").content.decode()

    assert "2 seeds" in page
    assert "How do I keep basil alive indoors?" in page
    assert f'href="/runs/new/?seed_set={seed_set.pk}"' in page
    assert f'href="/imports/{job.pk}/"' in page and f'href="/imports/{failed.pk}/"' in page
    assert "late.csv:line 9: invalid UTF-8" in page
    assert f'href="/runs/{run.pk}/">first run</a>' in page


def test_it_escapes_seed_text_and_report_entries(garden, as_reviewer):
    seed_set, job = garden

    detail = as_reviewer.get(f"/seeds/{seed_set.pk}/").content.decode()
    status = as_reviewer.get(f"/imports/{job.pk}/").content.decode()

    assert "<script>alert('seed')</script>" not in detail
    assert "&lt;script&gt;alert(&#x27;seed&#x27;)&lt;/script&gt;" in detail
    assert "invalid UTF-8 &lt;b&gt;x&lt;/b&gt;" in detail and "invalid UTF-8 &lt;b&gt;x&lt;/b&gt;" in status


def test_it_pages_through_the_seeds(db, as_reviewer):
    seed_set = make_seed_set("many")
    make_seeds(seed_set, [f"seed number {i:03d}" for i in range(120)])

    first = as_reviewer.get(f"/seeds/{seed_set.pk}/").content.decode()
    third = as_reviewer.get(f"/seeds/{seed_set.pk}/?page=3").content.decode()

    assert "seed number 000" in first and "seed number 050" not in first
    assert "page 3 of 3" in third and "seed number 119" in third and "seed number 049" not in third


# --- the import status page --------------------------------------------------------------------------------
def test_it_refreshes_the_status_page_while_the_import_runs(db, as_reviewer):
    job = Import.objects.create(kind=Import.Kind.SEEDS, seed_set_name="later", filename="big.jsonl",
                                status="running", rows_read=420_000, started_at=timezone.now() - timedelta(seconds=5),
                                heartbeat_at=timezone.now())

    page = as_reviewer.get(f"/imports/{job.pk}/").content.decode()

    assert '<meta http-equiv="refresh" content="2">' in page
    assert "<th>Rows read</th><td>420000</td>" in page


def test_it_refuses_an_oversized_upload_before_reading_it(db, as_reviewer, artifacts, settings):
    settings.MAX_UPLOAD_MB = 1

    response = as_reviewer.post("/seeds/", data=b"x" * 10, content_type="multipart/form-data; boundary=b",
                                CONTENT_LENGTH=str(5 * 1024 * 1024))

    assert response.status_code == 413
    assert "The upload is 5.0 MB; uploads are limited to 1 MB (MAX_UPLOAD_MB)" in response.content.decode()
    assert Import.objects.count() == 0
