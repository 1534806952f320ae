"""Artifact storage in an S3-compatible store (BAIZE_ARTIFACT_S3_BUCKET): an export is kept in the bucket with its
sha256 and downloaded from it, page and API; uploads are kept there for the worker that imports them.

The store is moto's S3 server, in a process of its own on a free port of 127.0.0.1; the storage is the one
settings.py builds from the environment variables, so the variables, boto3 and django-storages are what is tested.
"""
import hashlib
import json
import os
import runpy
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import boto3
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage, storages
from django.core.files.uploadedfile import SimpleUploadedFile
from storages.backends.s3 import S3Storage

import baize_eval.settings
from collection.exporting import export_execute, export_start
from collection.models import Dialogue, Export, Import, Seed
from collection.seeding import seed_import_execute
from tests.factories import make_dialogue, make_seed_set

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "baize-test", "AWS_SECRET_ACCESS_KEY": "baize-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
MOTO_SERVER = """
import sys
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # serves until the test closes this process's stdin
server.stop()
"""


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server, and a plain boto3 client on it: how the test looks into the bucket from outside."""
    process = subprocess.Popen([sys.executable, "-c", MOTO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"moto's server did not start (exit status {process.poll()})"
        yield boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="baize-test",
                           aws_secret_access_key="baize-test-secret", region_name="us-east-1")
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def bucket(s3, settings, monkeypatch, tmp_path):
    """A new bucket, made artifact storage the way settings.py does it from BAIZE_ARTIFACT_S3_BUCKET,
    BAIZE_ARTIFACT_S3_ENDPOINT and the AWS_* credentials."""
    name = f"artifacts-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    for variable in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_S3_SESSION_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in {**CREDENTIALS, "BAIZE_ARTIFACT_S3_BUCKET": name,
                            "BAIZE_ARTIFACT_S3_ENDPOINT": s3.meta.endpoint_url,
                            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}.items():
        monkeypatch.setenv(variable, value)
    configured = runpy.run_path(baize_eval.settings.__file__)["STORAGES"]["default"]
    settings.STORAGES = {**settings.STORAGES, "default": configured}
    # Changing STORAGES drops the cached storages: the default storage is now this bucket.
    assert isinstance(storages["default"], S3Storage)
    assert default_storage.bucket_name == name
    return name


def stored(s3, bucket, key):
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3, bucket, prefix):
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", ()))


@pytest.fixture
def done_export(bucket, db):
    garden = make_seed_set("garden")
    make_dialogue(garden, topic="Basil", status="approved")
    make_dialogue(garden, topic="Ferns", status="approved",
                  turns=[{"role": "human", "text": "When should I repot a fern?"}, {"role": "ai", "text": "Spring."}])
    make_dialogue(garden, topic="Moss", status="undecided")
    export = export_execute(export_start(fmt="openai", spec={"dedupe": False, "shuffle": False}, enqueue=False).pk)
    assert export.status == "succeeded", export.error
    return export


def test_it_keeps_an_export_in_the_bucket_with_its_sha256_and_size(s3, bucket, done_export):
    assert keys(s3, bucket, "exports/") == [done_export.path]
    content = stored(s3, bucket, done_export.path)
    assert hashlib.sha256(content).hexdigest() == done_export.sha256
    assert len(content) == done_export.size_bytes > 0
    assert [json.loads(line)["messages"][0]["content"] for line in content.decode().splitlines()] == \
        ["How do I keep basil alive indoors?", "When should I repot a fern?"]


@pytest.mark.parametrize("url", ["/exports/{id}/download", "/api/exports/{id}/download/"])
def test_it_downloads_an_export_from_the_bucket(as_reviewer, as_rater, as_outsider, done_export, url):
    url = url.format(id=done_export.pk)
    for refused in (as_rater, as_outsider):
        assert refused.get(url).status_code == 403
    response = as_reviewer.get(url)
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{os.path.basename(done_export.path)}"'
    assert int(response["Content-Length"]) == done_export.size_bytes
    content = b"".join(response.streaming_content)
    assert hashlib.sha256(content).hexdigest() == done_export.sha256


@pytest.mark.parametrize("url", ["/exports/{id}/download", "/api/exports/{id}/download/"])
def test_it_answers_404_when_the_file_is_gone_from_the_bucket(s3, bucket, as_reviewer, done_export, url):
    s3.delete_object(Bucket=bucket, Key=done_export.path)
    assert as_reviewer.get(url.format(id=done_export.pk)).status_code == 404


def test_it_streams_a_download_without_holding_the_file_in_memory(bucket, as_reviewer, reviewer):
    size = 16 * 1024 * 1024
    content = os.urandom(size)
    path = default_storage.save("exports/big/big.jsonl", ContentFile(content))
    export = Export.objects.create(format="openai", spec={}, status="succeeded", path=path, size_bytes=size,
                                   sha256=hashlib.sha256(content).hexdigest(), created_by=reviewer)
    del content

    def download():
        digest = hashlib.sha256()
        response = as_reviewer.get(f"/api/exports/{export.pk}/download/")
        for chunk in response.streaming_content:  # read to the end: the test client then closes the response
            digest.update(chunk)
        return digest.hexdigest()

    download()  # once untraced: the first request's imports and caches are not the download's memory
    tracemalloc.start()
    try:
        sha256 = download()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sha256 == export.sha256
    # Holding the file (django-storages' S3File copies the object into memory) would peak above 16 MB.
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1024 / 1024:.1f} MB while downloading 16 MB"


def test_it_imports_uploaded_seeds_kept_in_the_bucket_under_names_of_their_own(s3, bucket, as_reviewer):
    # Two uploads with the same name: the second must not replace the first before its import has read it.
    first = b"question\nHow do I keep basil alive?\nWhen should I repot a fern?\n"
    second = b"question\nWhy is my moss turning brown?\n"
    ids = []
    for seed_set, content in (("garden", first), ("moss", second)):
        response = as_reviewer.post("/api/seed-imports/", {
            "file": SimpleUploadedFile("seeds.csv", content, content_type="text/csv"), "seed_set": seed_set,
            "column": "question"})
        assert response.status_code == 201, response.json()
        ids.append(response.json()["id"])
    paths = [Import.objects.get(pk=pk).path for pk in ids]
    assert len(set(paths)) == 2 and keys(s3, bucket, "imports/") == sorted(paths)
    assert [stored(s3, bucket, path) for path in paths] == [first, second]
    for pk in ids:
        job = seed_import_execute(pk)  # what the worker does: reads the upload back from the bucket
        assert (job.status, job.filename) == ("succeeded", "seeds.csv"), job.error
    assert sorted(Seed.objects.filter(seed_set__name="garden").values_list("text", flat=True)) == \
        ["How do I keep basil alive?", "When should I repot a fern?"]
    assert list(Seed.objects.filter(seed_set__name="moss").values_list("text", flat=True)) == \
        ["Why is my moss turning brown?"]


def test_it_imports_an_uploaded_corpus_kept_in_the_bucket(s3, bucket, as_reviewer, eager,
                                                          django_capture_on_commit_callbacks):
    content = b'{"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello!"}]}\n'
    with django_capture_on_commit_callbacks(execute=True):
        response = as_reviewer.post("/imports/corpus/", {
            "file": SimpleUploadedFile("chats.jsonl", content, content_type="application/octet-stream"),
            "format": "sharegpt", "seed_set": "uploaded"})
    assert response.status_code == 302
    job = Import.objects.get()
    assert job.status == "succeeded", job.error
    assert keys(s3, bucket, "imports/corpus/") == [job.path] and stored(s3, bucket, job.path) == content
    dialogue = Dialogue.objects.get()
    assert dialogue.source == "import:sharegpt:chats.jsonl"
    assert [turn["text"] for turn in dialogue.turns] == ["Hi?", "Hello!"]


def manage_check(*, prelude="pass", **variables):
    code = (f"import runpy, sys; {prelude}; sys.argv = ['manage.py', 'check']; "
            "runpy.run_path('manage.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **variables},
                          capture_output=True, text=True, timeout=120)


def test_it_stops_at_start_naming_the_variable_when_boto3_is_missing():
    result = manage_check(prelude="sys.modules['boto3'] = None", BAIZE_ARTIFACT_S3_BUCKET="artifacts")
    assert result.returncode != 0
    assert "BAIZE_ARTIFACT_S3_BUCKET is set but boto3 is not installed" in result.stderr


def test_it_stops_at_start_naming_a_bad_endpoint():
    result = manage_check(BAIZE_ARTIFACT_S3_BUCKET="artifacts", BAIZE_ARTIFACT_S3_ENDPOINT="minio:9000")
    assert result.returncode != 0
    assert "BAIZE_ARTIFACT_S3_ENDPOINT=" in result.stderr
    assert manage_check(BAIZE_ARTIFACT_S3_BUCKET="artifacts", **CREDENTIALS,
                        BAIZE_ARTIFACT_S3_ENDPOINT="http://127.0.0.1:9000").returncode == 0
