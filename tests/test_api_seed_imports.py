"""API: seed imports — upload a file to start one, then read its status, counts and bad-row report."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from collection.models import Import, Seed, SeedSet
from collection.seeding import seed_import_execute

CSV = b"question,lang\nHow do I keep basil alive?,en\nWhen should I repot a fern?,en\nHow do I keep basil alive?,en\n"


# Uploads are stored for the worker: each test keeps them in its own folder.
pytestmark = pytest.mark.usefixtures("artifacts")


def upload(client, content=CSV, name="seeds.csv", **fields):
    data = {"file": SimpleUploadedFile(name, content, content_type="text/csv"), "seed_set": "garden", **fields}
    return client.post("/api/seed-imports/", data)


def test_it_refuses_anonymous_raters_and_outsiders(client, as_rater, as_outsider, reviewer):
    job = Import.objects.create(kind="seeds", filename="x.csv", seed_set_name="x", created_by=reviewer)
    assert upload(client).status_code == 401
    for who in (as_rater, as_outsider):
        assert upload(who).status_code == 403
        assert who.get("/api/seed-imports/").status_code == 403
        assert who.get(f"/api/seed-imports/{job.pk}/").status_code == 403
    assert client.get(f"/api/seed-imports/{job.pk}/").status_code == 401
    assert Import.objects.count() == 1


def test_it_starts_an_import_from_an_upload_and_reports_it(as_reviewer, reviewer, artifacts):
    response = upload(as_reviewer, column="question", source="quora", tags=["plants", "home"])
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["filename"], body["seed_set_name"], body["created_by"]) == \
        ("queued", "seeds.csv", "garden", "rita")
    assert "path" not in body
    assert list((artifacts / "imports").iterdir())  # kept in artifact storage for the worker
    seed_import_execute(body["id"])  # what the worker does with the queued job
    done = as_reviewer.get(f"/api/seed-imports/{body['id']}/").json()
    assert (done["status"], done["imported"], done["duplicates"], done["bad"]) == ("succeeded", 2, 1, 0)
    seed_set = SeedSet.objects.get(name="garden")
    assert (done["seed_set"], seed_set.source, seed_set.tags) == (seed_set.pk, "quora", ["plants", "home"])
    assert Seed.objects.filter(seed_set=seed_set).count() == 2
    assert [j["id"] for j in as_reviewer.get(f"/api/seed-imports/?seed_set={seed_set.pk}").json()["results"]] == \
        [body["id"]]


def test_it_reports_a_failed_import_naming_file_and_line(as_admin, db):
    response = upload(as_admin, column="title")
    seed_import_execute(response.json()["id"])
    failed = as_admin.get(f"/api/seed-imports/{response.json()['id']}/").json()
    assert failed["status"] == "failed"
    assert "seeds.csv" in failed["error"] and "title" in failed["error"]
    assert not SeedSet.objects.exists()


def test_it_lists_bad_rows_when_skipping_them(as_reviewer, db):
    content = b'{"text": "good one"}\n{"text": \n{"text": "good two"}\n'
    response = upload(as_reviewer, content=content, name="seeds.jsonl", skip_bad="true")
    seed_import_execute(response.json()["id"])
    body = as_reviewer.get(f"/api/seed-imports/{response.json()['id']}/").json()
    assert (body["status"], body["imported"], body["bad"]) == ("succeeded", 2, 1)
    assert "line 2" in body["report"][0]["where"]


@pytest.mark.parametrize("fields,field", [
    ({"seed_set": ""}, "seed_set"),
    ({"format": "xlsx"}, "format"),
    ({"file": ""}, "file"),
])
def test_it_names_the_field_of_a_bad_upload(as_reviewer, db, fields, field):
    data = {"file": SimpleUploadedFile("seeds.csv", CSV), "seed_set": "garden", **fields}
    response = as_reviewer.post("/api/seed-imports/", data)
    assert response.status_code == 400
    assert field in response.json()
    assert not Import.objects.exists()


def test_it_refuses_an_upload_over_the_size_limit(as_reviewer, settings, artifacts):
    settings.MAX_UPLOAD_MB = 1
    response = upload(as_reviewer, content=b"q\n" + b"x" * (1024 * 1024 + 10), name="big.csv")
    assert response.status_code == 400
    assert "big.csv" in response.json()["file"][0]
    assert not Import.objects.exists()
    assert not (artifacts / "imports").exists()


def test_it_runs_the_import_in_process_in_the_embedded_mode(as_reviewer, eager,
                                                             django_capture_on_commit_callbacks):
    bad = b"question\nfine\n" + b"\xff\xfe broken\n"
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(as_reviewer, content=bad, name="broken.txt", format="txt")
    assert response.status_code == 201
    body = as_reviewer.get(f"/api/seed-imports/{response.json()['id']}/").json()
    assert body["status"] == "failed"
    assert "broken.txt" in body["error"] and "line 3" in body["error"], body["error"]
    assert not SeedSet.objects.exists()
