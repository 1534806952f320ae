"""API: corpus exports — start one with the queue's filters, follow it, download the file; and who may."""
import hashlib
import json

import pytest

from collection.exporting import export_execute
from collection.models import Export
from tests.factories import make_dialogue, make_seed_set


# Exports write files: each test keeps them in its own folder.
pytestmark = pytest.mark.usefixtures("artifacts")


@pytest.fixture
def corpus(db):
    garden = make_seed_set("garden")
    approved = make_dialogue(garden, topic="Basil", status="approved")
    make_dialogue(garden, topic="Ferns", status="undecided")
    return garden, approved


def post(client, data):
    return client.post("/api/exports/", data, content_type="application/json")


def test_it_refuses_anonymous_raters_and_outsiders(client, as_rater, as_outsider, reviewer, corpus):
    export = Export.objects.create(format="openai", created_by=reviewer)
    urls = ["/api/exports/", f"/api/exports/{export.pk}/", f"/api/exports/{export.pk}/download/"]
    for url in urls:
        assert client.get(url).status_code == 401
    assert post(client, {"format": "openai"}).status_code == 401
    for who in (as_rater, as_outsider):
        for url in urls:
            assert who.get(url).status_code == 403
        assert post(who, {"format": "openai"}).status_code == 403
    assert Export.objects.count() == 1


def test_it_exports_and_downloads_the_file(as_reviewer, reviewer, corpus):
    response = post(as_reviewer, {"format": "openai", "seed_set": corpus[0].pk, "dedupe": False})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["created_by"], body["download_url"]) == ("queued", "rita", None)
    assert (body["spec"]["status"], body["spec"]["seed_set"], body["spec"]["include_flagged"]) == \
        ("approved", corpus[0].pk, False)
    assert as_reviewer.get(f"/api/exports/{body['id']}/download/").status_code == 409
    export_execute(body["id"])  # what the worker does with the queued export
    done = as_reviewer.get(f"/api/exports/{body['id']}/").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["counts"]["written"] == 1
    assert done["download_url"] == f"/api/exports/{body['id']}/download/"
    download = as_reviewer.get(done["download_url"])
    assert download.status_code == 200
    assert download["Content-Disposition"].startswith("attachment;")
    content = b"".join(download.streaming_content)
    assert hashlib.sha256(content).hexdigest() == done["sha256"]
    record = json.loads(content.decode().splitlines()[0])
    assert record["messages"][0] == {"role": "user", "content": "How do I keep basil alive indoors?"}


def test_it_downloads_as_octet_stream_when_asked(as_reviewer, corpus):
    export_id = post(as_reviewer, {"format": "baize", "status": "all", "dedupe": False}).json()["id"]
    export_execute(export_id)
    response = as_reviewer.get(f"/api/exports/{export_id}/download/", HTTP_ACCEPT="application/octet-stream")
    assert response.status_code == 200
    assert len(json.loads(b"".join(response.streaming_content))) == 2


def test_it_lets_every_reviewer_download_the_teams_exports(as_reviewer, as_admin, reviewer2, corpus):
    # Exports are the team's corpus, not private: another reviewer's export is listed and downloadable.
    export_id = post(as_admin, {"format": "sharegpt", "dedupe": False}).json()["id"]
    export_execute(export_id)
    listed = as_reviewer.get("/api/exports/?created_by=ada&fmt=sharegpt").json()["results"]
    assert [e["id"] for e in listed] == [export_id]
    assert as_reviewer.get("/api/exports/?fmt=baize").json()["count"] == 0
    assert as_reviewer.get(f"/api/exports/{export_id}/download/").status_code == 200


@pytest.mark.parametrize("data,field", [
    ({"format": "xml"}, "format"),
    ({}, "format"),
    ({"format": "openai", "val_fraction": 1.5}, "val_fraction"),
    ({"format": "openai", "min_turns": -1}, "min_turns"),
    ({"format": "openai", "status": "maybe"}, "status"),
    ({"format": "openai", "q": "x" * 501}, "q"),
])
def test_it_names_the_field_of_a_bad_export(as_reviewer, corpus, data, field):
    response = post(as_reviewer, data)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not Export.objects.exists()


def test_it_answers_404_for_a_missing_export(as_reviewer, db):
    assert as_reviewer.get("/api/exports/999999/").status_code == 404
    assert as_reviewer.get("/api/exports/999999/download/").status_code == 404
