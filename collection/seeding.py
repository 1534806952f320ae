"""Seed import: a CSV, TSV, JSONL, text, Parquet file or a Hugging Face dataset becomes a seed set.

What a user gets:
- every seed stored with its normalized text, a hash, and where it came from ("seeds.csv:line 12");
- exact duplicates (within the file and against seeds already in the set) skipped and counted;
- all or nothing: the first bad row fails the import with "seeds.csv:line 12: <what is wrong>" and nothing is
  imported (a new seed set is created only when its import succeeds); with skip_bad the good rows go in and
  Import.report lists the bad ones (first 1000, all counted);
- progress (rows read, heartbeat) on the Import row while it runs, for the status page, API and CLI.

Speed: on Postgres the rows stream through COPY into a temporary table and go into the seed table with one
INSERT … ON CONFLICT DO NOTHING, so a million seeds take seconds (bench/seed_import.py). On SQLite (the embedded
demo) they go in with bulk_create(ignore_conflicts=True).
"""
import contextlib
import logging
import os
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from collection.background import read_ahead
from collection.models import Import, JobStatus, Seed, SeedSet, normalize_seed_text, seed_hash
from collection.readers import FORMATS, ReaderError, iter_texts

logger = logging.getLogger(__name__)

REPORT_LIMIT = 1000
SQLITE_BATCH = 2_000
BATCH_ROWS = 50_000
_SOURCE_REF_MAX = Seed._meta.get_field("source_ref").max_length


class SeedImportError(ValueError):
    """A request to import that cannot be started (names the field), or an import that failed (names the row)."""


def seed_import_start(*, path, seed_set_name, column=None, fmt=None, skip_bad=False, filename=None, source="",
                      tags=(), created_by=None, enqueue=True):
    """Record an import of `path` into the seed set `seed_set_name` and queue it (Celery task
    `collection.import_seeds`, run in-process when tasks are eager). Returns the Import row to follow.

    `path` is a local file or folder (absolute), or a name in artifact storage (relative, e.g. "imports/x.csv").
    With enqueue=False nothing is queued: the caller runs seed_import_execute itself (the CLI does).
    """
    seed_set_name = (seed_set_name or "").strip()
    if not seed_set_name:
        raise SeedImportError("seed set: a name is required")
    if len(seed_set_name) > SeedSet._meta.get_field("name").max_length:
        raise SeedImportError("seed set: the name is longer than 200 characters")
    if fmt and fmt not in FORMATS:
        raise SeedImportError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if isinstance(tags, str):
        tags = [tags]
    tags = [t.strip() for t in tags if t and t.strip()]
    path = os.fspath(path)
    job = Import.objects.create(
        kind=Import.Kind.SEEDS,
        seed_set=SeedSet.objects.filter(name=seed_set_name).first(),
        seed_set_name=seed_set_name,
        seed_set_source=(source or "").strip()[:200],
        seed_set_tags=tags,
        filename=(filename or Path(path).name)[:500],
        path=path,
        format=fmt or "",
        column=column or "",
        skip_bad=bool(skip_bad),
        created_by=created_by,
    )
    if enqueue:
        from collection.tasks import import_seeds

        transaction.on_commit(lambda: import_seeds.delay(job.pk))
    return job


def seed_import_execute(import_id):
    """Claim the queued Import row and run it. Returns the row, finished (or untouched if another worker has it)."""
    job = Import.objects.filter(pk=import_id, kind=Import.Kind.SEEDS).first()
    if job is None or not job.claim():
        return job
    tally = _Tally(skip_bad=job.skip_bad)
    try:
        with local_file(job.path) as local_path:
            _run(job, local_path, tally)
    except _Superseded:
        logger.warning("seed import %s: this attempt was superseded by a re-queued one; rolled back", job.pk)
    except (ReaderError, SeedImportError) as exc:
        _fail(job, str(exc), tally)
    except Exception as exc:  # the row must not stay "running" whatever broke; the traceback goes to the log
        logger.exception("seed import %s failed", job.pk)
        _fail(job, f"{job.filename}: the import stopped on an unexpected error ({type(exc).__name__}: {exc})", tally)
    job.refresh_from_db()
    return job


def seed_imports_recover_stale(*, stale_seconds=None):
    """Re-queue seed imports whose worker went silent (no heartbeat for `stale_seconds`, default
    settings.JOB_STALE_SECONDS). Safe: an import commits all at once, so a dead one left nothing behind, and a
    slow one that finishes after all rolls back (see _this_attempt). Returns how many were re-queued."""
    from collection.tasks import import_seeds

    cutoff = timezone.now() - timedelta(seconds=stale_seconds or settings.JOB_STALE_SECONDS)
    requeued = 0
    stale = Import.objects.filter(kind=Import.Kind.SEEDS, status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
    for pk in stale.values_list("pk", flat=True):
        if stale.filter(pk=pk).update(status=JobStatus.QUEUED, heartbeat_at=timezone.now()):
            requeued += 1
            transaction.on_commit(lambda pk=pk: import_seeds.delay(pk))
    return requeued


class _Tally:
    """Counts and the bad-row report, shared by the reader's on_bad callback and the import loop."""

    def __init__(self, *, skip_bad):
        self.skip_bad = skip_bad
        self.rows_read = 0
        self.good = 0
        self.bad = 0
        self.report = []

    def on_bad(self, error):
        if not self.skip_bad:
            raise error
        self.rows_read += 1
        self.bad += 1
        if len(self.report) < REPORT_LIMIT:
            self.report.append(error.as_report())


class _Superseded(Exception):
    """This attempt was declared stale and the import re-queued; its work is rolled back."""


def _this_attempt(job):
    return Import.objects.filter(pk=job.pk, status=JobStatus.RUNNING, started_at=job.started_at)


def _fail(job, message, tally):
    _this_attempt(job).update(
        status=JobStatus.FAILED, error=message, finished_at=timezone.now(), heartbeat_at=timezone.now(),
        rows_read=tally.rows_read, imported=0, duplicates=0, bad=tally.bad, report=tally.report,
    )


@contextlib.contextmanager
def local_file(path):
    """A local path for the readers: the path itself, or a temporary copy of an artifact not on local disk."""
    if os.path.isabs(path):
        yield path
        return
    try:
        yield default_storage.path(path)
        return
    except NotImplementedError:
        pass  # a remote store (S3): copy it down, streaming
    suffix = "".join(Path(path).suffixes)
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with default_storage.open(path, "rb") as remote:
            shutil.copyfileobj(remote, tmp, 1 << 20)
        tmp.flush()
        yield tmp.name


def _run(job, local_path, tally):
    texts = iter_texts(local_path, column=job.column or None, fmt=job.format or None, name=job.filename,
                       on_bad=tally.on_bad)
    rows = _seed_rows(texts, tally)
    with transaction.atomic(), contextlib.closing(ImportProgress(job.pk)) as progress:
        seed_set = _seed_set_for(job)
        if connection.vendor == "postgresql":
            inserted = _insert_postgres(seed_set.pk, rows, job.pk, after_batch=lambda: progress.update(tally.rows_read))
        else:
            inserted = _insert_bulk(seed_set, rows)
        if tally.good == 0:
            raise SeedImportError(f"{job.filename}: no seeds found in the file"
                                  + (f" (all {tally.bad} rows were bad)" if tally.bad else ""))
        # Counts and status commit together with the seeds: a reader never sees "succeeded" without them. The
        # condition makes a run that was given up on as stale (and re-queued) roll back instead of counting twice.
        now = timezone.now()
        finished = _this_attempt(job).update(
            status=JobStatus.SUCCEEDED, finished_at=now, heartbeat_at=now, error="", seed_set=seed_set,
            rows_read=tally.rows_read, imported=inserted, duplicates=tally.good - inserted, bad=tally.bad,
            report=tally.report,
        )
        if not finished:
            raise _Superseded()


def _seed_set_for(job):
    try:
        with transaction.atomic():
            seed_set, created = SeedSet.objects.get_or_create(
                name=job.seed_set_name,
                defaults={"source": job.seed_set_source, "tags": job.seed_set_tags, "created_by": job.created_by},
            )
    except IntegrityError:  # created by a concurrent import a moment ago
        seed_set, created = SeedSet.objects.get(name=job.seed_set_name), False
    if not created:
        changed = []
        new_tags = [t for t in job.seed_set_tags if t not in seed_set.tags]
        if new_tags:
            seed_set.tags = list(seed_set.tags) + new_tags
            changed.append("tags")
        if job.seed_set_source and not seed_set.source:
            seed_set.source = job.seed_set_source
            changed.append("source")
        if changed:
            seed_set.save(update_fields=changed)
    return seed_set


def _seed_rows(texts, tally):
    """(normalized text, hash, where) for each good seed; bad ones go to the tally (or raise)."""
    normalize, hash_of = normalize_seed_text, seed_hash
    for where, raw in texts:
        text = normalize(raw)
        if not text:
            tally.on_bad(ReaderError(where, "empty seed (nothing but whitespace)"))
            continue
        if "\x00" in text:
            tally.on_bad(ReaderError(where, "contains a NUL character, which the database cannot store"))
            continue
        tally.rows_read += 1
        tally.good += 1
        yield text, hash_of(text), where[:_SOURCE_REF_MAX]


def _copy_escape(value):
    # COPY text format: backslash, tab, newline and carriage return are special.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _insert_postgres(seed_set_id, rows, job_id, *, after_batch):
    """Batches: COPY into a temporary table, then INSERT … ON CONFLICT DO NOTHING; returns how many rows went in.

    The file is read and parsed in a background thread while the database works on the previous batch, so the
    import takes about as long as the database's share of it (see bench/seed_import.py).
    """
    staging = f"seed_import_{int(job_id)}"
    inserted = 0
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE {staging} (ord bigint, text text, text_hash varchar(40), source_ref text) "
            "ON COMMIT DROP"
        )
        for copy_text in read_ahead(_copy_batches(rows), name="seed-import-reader"):
            with cursor.copy(f"COPY {staging} (ord, text, text_hash, source_ref) FROM STDIN") as copy:
                copy.write(copy_text)
            # The first occurrence in the file wins (ORDER BY ord), so ids and source_ref follow the file; rows
            # already in the set (from this import's earlier batches or before) are duplicates.
            cursor.execute(
                f"INSERT INTO {Seed._meta.db_table} (seed_set_id, text, text_hash, source_ref, created_at) "
                f"SELECT %s, text, text_hash, source_ref, %s FROM {staging} ORDER BY ord "
                "ON CONFLICT (seed_set_id, text_hash) DO NOTHING",
                [seed_set_id, now],
            )
            inserted += cursor.rowcount
            cursor.execute(f"TRUNCATE {staging}")
            after_batch()
        # ON COMMIT DROP covers the usual case; this covers an import run inside a longer transaction.
        cursor.execute(f"DROP TABLE {staging}")
    return inserted


def _copy_batches(rows):
    """COPY text-format data for BATCH_ROWS rows at a time."""
    lines = []
    ordinal = 0
    for text, digest, where in rows:
        ordinal += 1
        # Normalized text holds no tab/newline/CR (whitespace is collapsed); only backslashes need escaping.
        if "\\" in text:
            text = text.replace("\\", "\\\\")
        lines.append(f"{ordinal}\t{text}\t{digest}\t{_copy_escape(where)}\n")
        if len(lines) >= BATCH_ROWS:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def _insert_bulk(seed_set, rows):
    before = Seed.objects.filter(seed_set=seed_set).count()
    batch = []
    for text, digest, where in rows:
        batch.append(Seed(seed_set=seed_set, text=text, text_hash=digest, source_ref=where))
        if len(batch) >= SQLITE_BATCH:
            Seed.objects.bulk_create(batch, ignore_conflicts=True)
            batch.clear()
    if batch:
        Seed.objects.bulk_create(batch, ignore_conflicts=True)
    return Seed.objects.filter(seed_set=seed_set).count() - before


class ImportProgress:
    """Writes an Import's rows_read and heartbeat on a second connection, because the import's own transaction
    is not visible until it commits. Postgres only: on SQLite a second writer would wait for the import's lock.
    Also used by the corpus import. Call update(rows_read) as often as you like (it writes at most once a second)
    from the thread that created it, and close() at the end."""

    def __init__(self, job_id):
        self.job_id = job_id
        self.conn = None
        self.last = 0.0
        self.interval = min(settings.JOB_HEARTBEAT_SECONDS, 1.0)

    def update(self, rows_read):
        if connection.vendor != "postgresql":
            return
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        try:
            if self.conn is None:
                self.conn = connection.copy()
                with self.conn.cursor() as cursor:
                    # Never wait on the import row: a missed heartbeat is harmless, a stuck import is not.
                    cursor.execute("SET lock_timeout = '500ms'")
            with self.conn.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {Import._meta.db_table} SET rows_read = %s, heartbeat_at = %s WHERE id = %s",
                    [rows_read, timezone.now(), self.job_id],
                )
        except DatabaseError:
            logger.warning("seed import %s: progress update skipped", self.job_id, exc_info=True)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


_Progress = ImportProgress  # the name collection/corpus_import.py imports
