"""Artifact storage read back: a stored file sent as a download, streamed from wherever it is kept."""
from django.core.files.storage import default_storage
from django.http import FileResponse


def download_response(name, *, filename):
    """An attachment response that streams the stored file `name` (a local file, or an object in an S3 store)
    under `filename`. Raises FileNotFoundError when the file is not in artifact storage.

    An S3 object goes out as the body of one GET, relayed as it arrives: django-storages' own file object would
    first copy the whole object into the web process's memory (its buffer spills to disk only when
    AWS_S3_MAX_MEMORY_SIZE is set), and an export can be gigabytes."""
    handle = default_storage.open(name, "rb")
    s3_object = getattr(handle, "obj", None)  # django-storages' S3File: the boto3 Object, known to exist
    if s3_object is None:
        return FileResponse(handle, as_attachment=True, filename=filename)
    handle.close()
    got = s3_object.get()
    response = FileResponse(got["Body"], as_attachment=True, filename=filename)
    response["Content-Length"] = got["ContentLength"]  # a stream does not say its length; S3 does
    return response
