"""Corpus export: the dialogues a filter picks, written as a training file and kept as a record.

What a user gets: `export_start` records an Export (its spec: the review queue's filters plus export options) and
queues it; `export_execute` writes the file into artifact storage with its sha256, counts and progress on the row.
Options (all recorded in the spec, with their defaults):
  status "approved"; include_flagged False (flagged dialogues are left out); dedupe True (near-duplicates collapsed
  to the lowest id, estimated Jaccard >= dedupe_threshold 0.85, from the MinHash signatures the corpus pass stores
  on each dialogue); val_fraction 0 (share of seeds in the validation split: split by a hash of the seed text, or
  the topic without a seed, so no seed is on both sides); shuffle True with shuffle_seed 0 (order by a hash of
  (shuffle_seed, id)).
The same spec on unchanged data gives a byte-identical file.

Artifacts: one file for Baize JSON / OpenAI JSONL / ShareGPT JSONL; a .zip of train + validation files when
val_fraction > 0; for the Hugging Face format a .zip holding dataset/ (datasets.load_from_disk: a DatasetDict with
"train" and, when split, "validation") and parquet/<split>.parquet, columns id, topic, messages, seed_set, source,
split (collection.export_hf).

How it runs, with flat memory (bench/export.py, BENCHMARKS.md: 1,000,000 dialogues in 118-266 MB):
  1. read: the rows are read once, in id order, in keyset pages (like COPY, no random access), the next page by a
     helper thread while this one is rendered (collection.formats); each row's split comes from a hash of its
     seed text (or topic), its shuffled place from a hash of (shuffle_seed, id). Another thread counts the
     selection meanwhile (matched, flagged, without turns) for the progress bar and the record.
  2. near-duplicates: each row's LSH band keys are kept as it is read (from its stored signature); once all are
     read, rows sharing a band are confirmed against their full signatures and all but the lowest id left out.
  3. write: in id order straight to the file(s) when nothing is shuffled or collapsed; else through a spool on
     local disk (bucket files, ranges of the shuffle hash), replayed bucket by bucket in output order without the
     near-duplicates. The sha256 is computed as the file is written, on a helper thread.
Counts are taken when the export starts; a dialogue reviewed while it runs is exported as the read finds it.
"""
import contextlib
import hashlib
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from array import array
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import orjson
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import Count, Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from collection import export_hf, formats
from collection.background import read_ahead
from collection.filters import (
    MINHASH_PERM, band_keys, candidate_groups, dialogue_text, has_signature, lsh_bands, minhash_bytes, similar,
)
from collection.models import Dialogue, Export, JobStatus
from collection.selection import SelectionError, clean_spec, select_dialogues

log = logging.getLogger(__name__)

STREAM_CHUNK = 2000  # rows per keyset page
# The shuffle spool: 2**SPOOL_BUCKET_BITS buckets, so replaying one bucket holds 1/256 of the export (about 5 MB at
# a million dialogues of ~1.3 KB; 50 MB at ten million).
SPOOL_BUCKET_BITS = 8
PROGRESS_SECONDS = 1.0
DEFAULT_OPTIONS = {
    "include_flagged": False,
    "dedupe": True,
    "dedupe_threshold": 0.85,
    "val_fraction": 0.0,
    "shuffle": True,
    "shuffle_seed": 0,
}
SPLITS = ("train", "validation")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_MASK64 = (1 << 64) - 1


class ExportError(ValueError):
    """A bad export request; the message names the field."""


# --- the spec -----------------------------------------------------------------------------------------------

def export_spec_clean(raw):
    """Selection filters (collection.selection) plus export options, validated, every option present."""
    try:
        selection = clean_spec(raw)
    except SelectionError as error:
        raise ExportError(str(error)) from None
    selection.setdefault("status", "approved")
    spec = dict(selection)
    options = dict(DEFAULT_OPTIONS)
    if raw.get("exclude_flagged") not in (None, ""):
        options["include_flagged"] = not _boolean(raw["exclude_flagged"], "exclude_flagged")
    for key in ("include_flagged", "dedupe", "shuffle"):
        if raw.get(key) not in (None, ""):
            options[key] = _boolean(raw[key], key)
    for key, low, high in (("val_fraction", 0.0, 1.0), ("dedupe_threshold", 0.0, 1.0)):
        if raw.get(key) not in (None, ""):
            options[key] = _number(raw[key], key, float, low, high)
    if raw.get("shuffle_seed") not in (None, ""):
        options["shuffle_seed"] = _number(raw["shuffle_seed"], "shuffle_seed", int, 0, 2**63 - 1)
    if options["val_fraction"] >= 1.0:
        raise ExportError("val_fraction: must be below 1 (some dialogues must stay in train)")
    if options["dedupe_threshold"] <= 0.0:
        raise ExportError("dedupe_threshold: must be above 0")
    spec.update(options)
    return spec


def _boolean(value, name):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ExportError(f"{name}: {value!r} is not a yes/no value")


def _number(value, name, kind, low, high):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ExportError(f"{name}: {value!r} is not a {'whole ' if kind is int else ''}number") from None
    if isinstance(value, bool) or not (low <= number <= high) or number != number:
        raise ExportError(f"{name}: {value!r} must be between {low} and {high}")
    return number


def _selection_of(spec):
    return {key: spec[key] for key in clean_spec(spec)}


def _excludes_flagged(spec):
    # A filter that asks for flagged dialogues (flag "any" or a rule) means the user wants them.
    return not spec["include_flagged"] and spec.get("flag") in (None, "none")


# --- service ------------------------------------------------------------------------------------------------

def export_start(*, fmt, spec, created_by=None, enqueue=True):
    """Record an export of the dialogues `spec` picks, in format `fmt`, and queue it (collection.export_corpus)
    once the transaction commits; enqueue=False leaves it for the caller to run (the CLI runs it in-process).
    Raises ExportError naming the bad field. The row's status, progress and counts tell how it goes."""
    from collection.tasks import export_corpus

    if fmt not in Export.Format.values:
        raise ExportError(f"format: {fmt!r} is not one of {', '.join(Export.Format.values)}")
    export = Export.objects.create(format=fmt, spec=export_spec_clean(spec), created_by=created_by)
    if enqueue:
        transaction.on_commit(lambda: export_corpus.delay(export.pk))
    return export


def export_execute(export_id, *, out=None):
    """Claim the queued export and write it. With `out` (a local path, used by the CLI) the file(s) are also
    copied there: OUT itself, or OUT's stem + ".train"/".validation" + suffix when split, or a folder OUT for the
    Hugging Face format. Failures are recorded on the row (status failed, error text), never raised."""
    export = Export.objects.filter(pk=export_id).first()
    if export is None or not export.claim():
        return export
    Export.objects.filter(pk=export.pk).update(code_version=code_version())
    workdir = Path(tempfile.mkdtemp(prefix=f"export-{export.pk}-", dir=_temp_root()))
    try:
        with keep_alive(export):
            counts, files, digests = _write(export, workdir)
            artifact, name, (sha256, size) = _package(export, workdir, files, digests)
            if out is not None:
                counts["out"] = [str(p) for p in _deliver(export, files, Path(out))]
            path = _store(artifact, f"exports/{export.pk}/{name}")
        Export.objects.filter(pk=export.pk).update(path=path, sha256=sha256, size_bytes=size, counts=counts,
                                                   progress=counts["written"])
        export.mark_finished(JobStatus.SUCCEEDED)
    except Exception as error:  # noqa: BLE001 - recorded on the row for the page, API and CLI to show
        log.exception("export %s failed", export.pk)
        export.mark_finished(JobStatus.FAILED, error=f"{type(error).__name__}: {error}"[:2000])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    export.refresh_from_db()
    return export


def stale_jobs_fail():
    """Mark exports and corpus imports whose worker went silent (no heartbeat for JOB_STALE_SECONDS) as failed,
    so they do not show "running" forever. They are not re-queued: an export may have been run by the CLI, and a
    corpus import is one transaction, so nothing of it is left; the user starts it again. Returns how many."""
    from collection.models import Import

    cutoff = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS)
    failed = 0
    for queryset in (Export.objects.all(), Import.objects.filter(kind=Import.Kind.CORPUS)):
        failed += queryset.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff).update(
            status=JobStatus.FAILED, finished_at=timezone.now(),
            error="The worker stopped (no heartbeat for more than "
                  f"{settings.JOB_STALE_SECONDS:g} s); nothing was kept. Start it again.")
    return failed


@contextlib.contextmanager
def keep_alive(job):
    """Beat the job row's heartbeat from a helper thread (its own connection) while the block runs, whatever it
    is busy with (a long near-duplicate pass, zipping, copying into storage): only a job whose process died goes
    stale. Skipped inside a transaction, where another connection would not see the row, and on SQLite."""
    if connection.in_atomic_block or connection.vendor != "postgresql":
        yield
        return
    stop = threading.Event()
    model, pk = type(job), job.pk

    def beat():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '2s'")  # never wait long on the job row
            while not stop.wait(settings.JOB_HEARTBEAT_SECONDS):
                model.objects.filter(pk=pk, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
        except DatabaseError:
            log.warning("%s %s: heartbeat skipped", model.__name__, pk, exc_info=True)
        finally:
            connections.close_all()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-{model.__name__}-{pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@lru_cache(maxsize=1)
def code_version():
    """`git describe` of the running code when it is a git checkout, else the project's version."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=settings.BASE_DIR,
                                capture_output=True, text=True, timeout=5, check=False)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()[:64]
    except (OSError, subprocess.SubprocessError):
        pass
    return settings.SPECTACULAR_SETTINGS.get("VERSION", "unknown")


# --- read: which rows, in which order, on which side -----------------------------------------------------------

def _candidates(spec):
    qs = select_dialogues(_selection_of(spec))
    if _excludes_flagged(spec):
        qs = qs.filter(is_flagged=False)
    return qs.filter(num_turns__gt=0)


def _selection_counts(spec):
    """How many dialogues the filters match, and how many of them are left out as flagged or without turns: one
    aggregate query. Postgres's JIT is off for it: compiling this plain count costs more than it saves."""
    excludes = _excludes_flagged(spec)
    empty = Q(num_turns=0, is_flagged=False) if excludes else Q(num_turns=0)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
        counts = select_dialogues(_selection_of(spec)).order_by().aggregate(
            selected=Count("id"), flagged=Count("id", filter=Q(is_flagged=True)),
            skipped_empty=Count("id", filter=empty))
    return {"selected": counts["selected"], "excluded_flagged": counts["flagged"] if excludes else 0,
            "skipped_empty": counts["skipped_empty"]}


def _count_beside(export, spec):
    """Count the selection (and set the row's total for the progress bar) in a helper thread with its own
    connection while the rows are read, instead of a full pass before the read starts. Returns a function that
    waits for the counts (and raises the count's error). Inside a transaction another connection could not see
    the rows: counted here."""
    def count():
        counts = _selection_counts(spec)
        total = max(counts["selected"] - counts["excluded_flagged"] - counts["skipped_empty"], 0)
        Export.objects.filter(pk=export.pk).update(total=total, heartbeat_at=timezone.now())
        return counts

    if connection.in_atomic_block:
        counts = count()
        return lambda: counts

    def count_in_thread():
        try:
            return count()
        finally:
            connections.close_all()  # this thread's own connection

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"export-count-{export.pk}")
    future = executor.submit(count_in_thread)
    executor.shutdown(wait=False)  # no more work for it: its thread ends with the count
    return future.result

def _page_stream(queryset):
    """Every row of `queryset` (a values_list starting with id), in id order, a page (list of rows) at a time."""
    pages = _pages(queryset)
    # Outside a transaction the next page is read by a helper thread (its own connection) while this one is
    # rendered: the database and Python work side by side. Inside one (a test, a caller's atomic block) another
    # connection could not see the rows, so the pages are read here.
    return pages if connection.in_atomic_block else read_ahead(pages, name="export-read-ahead")


def _pages(queryset):
    """Keyset pages (id > last ORDER BY id LIMIT n): short queries in autocommit, so there is no long
    transaction, nothing is materialised on the server, and progress written meanwhile is visible at once.
    On Postgres the page query is the queryset's SQL compiled once and run on a plain cursor: the ORM's per-row
    work would otherwise compete with the rendering for the interpreter."""
    if connection.vendor == "postgresql":
        sql, params = queryset.order_by().query.sql_with_params()
        page_sql = f"SELECT * FROM ({sql}) AS picked WHERE picked.id > %s ORDER BY picked.id LIMIT {STREAM_CHUNK}"
        fetch = _raw_page(page_sql, params)
    else:
        def fetch(last):
            return list(queryset.filter(id__gt=last).order_by("id")[:STREAM_CHUNK])
    last = 0
    while True:
        rows = fetch(last)
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _raw_page(sql, params):
    def fetch(last):
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, last])
            return cursor.fetchall()
    return fetch


def _shuffle_keys(ids, seed_mix):
    """A fixed 64-bit hash of (shuffle seed, id) for each id, SplitMix64's finaliser: the order is the same on
    every machine, and adding rows keeps the relative order of the old ones."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) + np.uint64(seed_mix)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _split_is_validation(key, threshold):
    """Validation when the hash of the seed text (or the topic) falls under val_fraction: every dialogue of one
    seed lands on the same side."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < threshold


# --- write ------------------------------------------------------------------------------------------------

def _write(export, workdir):
    """Read the rows once, in id order (like COPY), render each page as it comes, and write them: straight to the
    file(s) in id order, or through the spool when shuffled or when near-duplicates are collapsed (which ones is
    known only once every signature has been read; output order: by shuffle key, or by id)."""
    spec = export.spec
    started = time.monotonic()
    Export.objects.filter(pk=export.pk).update(total=0, progress=0, heartbeat_at=timezone.now())
    counted = _count_beside(export, spec)

    val_fraction = spec["val_fraction"]
    splits = SPLITS if val_fraction > 0 else ("train",)
    threshold = int(val_fraction * 2**64)
    hf = export.format == formats.HF
    sink = export_hf.HfSink(workdir, splits) if hf else _TextSink(export.format, workdir, splits)
    width = 5 if hf else 3
    fields = ["id", "topic", "turns_text"] + (["seed_set__name", "source"] if hf else [])
    if val_fraction > 0:
        fields.append("seed__text")
    if spec["dedupe"]:
        fields.append("minhash")
    queryset = _candidates(spec).annotate(turns_text=Cast("turns", output_field=TextField())).values_list(*fields)
    signatures = _Signatures(spec["dedupe_threshold"]) if spec["dedupe"] else None
    spool = _Spool(workdir / "spool.bin", ordered=not spec["shuffle"]) if spec["shuffle"] or signatures else None
    seed_mix = (spec["shuffle_seed"] * 0x9E3779B97F4A7C15) & _MASK64
    seen = 0
    next_report = time.monotonic() + PROGRESS_SECONDS
    try:
        for page in _page_stream(queryset):
            ids = np.fromiter((row[0] for row in page), dtype=np.int64, count=len(page))
            # Compact copies: orjson hands back each record in an 8 KB buffer, and a page of them is held at once.
            pieces = [memoryview(sink.encode(row[:width])).tobytes() for row in page]
            if threshold:
                flags = np.fromiter((_split_is_validation(row[width] if row[width] is not None else row[1], threshold)
                                     for row in page), dtype=np.uint8, count=len(page))
            else:
                flags = np.zeros(len(page), dtype=np.uint8)
            if signatures is not None:
                signatures.add(ids, page)
            if spool is None:
                _write_by_split(sink, flags, pieces)
            else:
                spool.add(_shuffle_keys(ids, seed_mix) if spec["shuffle"] else ids.astype(np.uint64), ids, flags,
                          pieces)
            seen += len(page)
            if time.monotonic() >= next_report:
                Export.objects.filter(pk=export.pk).update(progress=seen, heartbeat_at=timezone.now())
                next_report = time.monotonic() + PROGRESS_SECONDS
        read = time.monotonic()
        counts = counted()
        duplicates = np.empty(0, dtype=np.int64)
        if signatures is not None:
            duplicates = signatures.duplicates()
            Export.objects.filter(pk=export.pk).update(total=seen - len(duplicates), heartbeat_at=timezone.now())
            signatures = None  # its memory is free for the replay
        deduped = time.monotonic()
        if spool is not None:
            for flags, pieces in spool.replay(skip=duplicates):
                _write_by_split(sink, flags, pieces)
    finally:
        files = sink.close()
        if spool is not None:
            spool.close()
    counts["collapsed_near_duplicates"] = len(duplicates)
    counts.update(train=sink.written["train"], validation=sink.written.get("validation", 0),
                  written=sum(sink.written.values()))
    # Where the time went, for the page and the benchmark (not part of the file).
    counts["seconds"] = {"read_and_render": round(read - started, 2),
                         "near_duplicates": round(deduped - read, 2),
                         "shuffle_and_finish": round(time.monotonic() - deduped, 2)}
    return counts, files, getattr(sink, "digests", {})


def _write_by_split(sink, flags, pieces):
    """Hand a run of rendered rows to the sink, each to its split (flags: 0 train, 1 validation)."""
    if not flags.any():
        sink.write_many(SPLITS[0], pieces)
        return
    for flag, split in enumerate(SPLITS):
        chosen = np.flatnonzero(flags == flag).tolist()
        if chosen:
            sink.write_many(split, [pieces[i] for i in chosen])


class _Signatures:
    """What the near-duplicate collapse keeps of each row read: its id and LSH band keys (collection.filters.
    band_keys, 48 bytes a row at the default threshold), from the stored Dialogue.minhash (the corpus pass stores it
    after every run and import) or, for a dialogue new or edited since, from a signature computed here from the
    text read (kept aside, not stored: an export only reads). Candidate pairs are confirmed at the end against
    their full signatures, read back by id."""

    def __init__(self, threshold):
        self.threshold = threshold
        self.bands = lsh_bands(threshold)
        self.id_pages, self.key_pages = [], []
        self.computed = {}  # id -> signature bytes, for the rows without a stored one

    def add(self, ids, page):
        """One page of rows (minhash last), in id order."""
        values = np.empty((len(page), MINHASH_PERM), dtype=np.uint8)
        stored = [row[-1] for row in page]
        ready = [i for i, value in enumerate(stored) if value is not None and len(value) == MINHASH_PERM]
        if ready:
            values[ready] = np.frombuffer(b"".join(stored[i] for i in ready), dtype=np.uint8).reshape(-1, MINHASH_PERM)
        if len(ready) < len(page):
            missing = sorted(set(range(len(page))) - set(ready))
            values[missing] = minhash_bytes(dialogue_text(orjson.loads(page[i][2])) for i in missing)
            self.computed.update((int(ids[i]), values[i].tobytes()) for i in missing)
        with_words = has_signature(values)  # a dialogue without words is never grouped
        self.id_pages.append(ids[with_words])
        self.key_pages.append(band_keys(values[with_words], self.bands))

    def duplicates(self):
        """Sorted ids to leave out: near-copies of a dialogue with a lower id."""
        self.ids = np.concatenate(self.id_pages or [np.empty(0, dtype=np.int64)])
        self.id_pages = None
        # One band's keys at a time, gathered from the pages: never a second copy of all of them.
        bands = (np.concatenate([keys[:, band] for keys in self.key_pages]) for band in range(self.bands[0]))
        groups = candidate_groups(self.ids, bands, self._confirm)
        self.key_pages = None
        return np.array(sorted(groups), dtype=np.int64)

    def _confirm(self, left, right):
        """Which candidate pairs (row numbers) are near-duplicates, by their full signatures."""
        signatures = self._signatures_of(np.unique(np.concatenate((self.ids[left], self.ids[right]))).tolist())
        lefts, rights = ([signatures.get(pk) for pk in self.ids[side].tolist()] for side in (left, right))
        # A dialogue whose signature is gone (edited since it was read) is not confirmed: both are kept.
        known = np.array([a is not None and b is not None for a, b in zip(lefts, rights)], dtype=bool)
        blank = bytes(MINHASH_PERM)
        lefts, rights = (np.frombuffer(b"".join(bytes(value or blank) for value in side), dtype=np.uint8)
                         .reshape(-1, MINHASH_PERM) for side in (lefts, rights))
        return known & similar(lefts, rights, self.threshold)

    def _signatures_of(self, ids):
        """{id: signature} for these ids: computed here, else stored."""
        found = {pk: self.computed[pk] for pk in ids if pk in self.computed}
        stored = [pk for pk in ids if pk not in found]
        for start in range(0, len(stored), STREAM_CHUNK):
            found.update(Dialogue.objects.filter(pk__in=stored[start:start + STREAM_CHUNK], minhash__isnull=False)
                         .values_list("pk", "minhash"))
        return found


class _Spool:
    """Puts rendered rows into their output order without holding them in memory, and leaves out the rows found
    to be near-duplicates once all are read. Shuffled: each row goes to the bucket its shuffle key falls in
    (buckets are ranges of the 64-bit key, so they fill evenly); then each bucket (a bounded slice of the output)
    is read back, sorted by key and written. In id order (`ordered`): one bucket, read back in slices. Two
    sequential passes over local disk instead of one random database read per row.

    All buckets share one file (one descriptor, however many exports a worker runs at once): a bucket's rows are
    gathered in a small buffer and appended to the file a CHUNK at a time, and the bucket notes where its chunks
    are. Per row, memory keeps its key, id, length and split: 21 bytes; the buffers hold at most 16 MB."""

    CHUNK = 1 << 16
    REPLAY_ROWS = 3_000  # rows per slice when replaying in id order (a shuffled bucket holds about as many)

    def __init__(self, path, *, ordered=False):
        self.file = open(path, "w+b")
        # 2**bits buckets: the top bits of the key pick one.
        self.bits = 0 if ordered else SPOOL_BUCKET_BITS
        self.ordered = ordered
        count = 1 << self.bits
        self.buffers = [bytearray() for _ in range(count)]
        self.chunks = [array("q") for _ in range(count)]  # (offset, length) pairs in the file
        self.size = 0
        self.keys = [array("Q") for _ in range(count)]
        self.ids = [array("q") for _ in range(count)]
        self.lengths = [array("I") for _ in range(count)]
        self.flags = [bytearray() for _ in range(count)]

    def add(self, keys, ids, flags, pieces):
        """One page of rows: their sort keys (uint64), ids, split flags and rendered bytes."""
        if self.bits:
            buckets = (keys >> np.uint64(64 - self.bits)).astype(np.intp)
            order = np.argsort(buckets, kind="stable")
            bounds = np.flatnonzero(np.diff(buckets[order])) + 1
            runs = np.split(order, bounds)
        else:
            runs = [np.arange(len(pieces))]
        for rows in runs:
            bucket = int(keys[rows[0]] >> np.uint64(64 - self.bits)) if self.bits else 0
            chosen = [pieces[i] for i in rows.tolist()]
            self.buffers[bucket] += b"".join(chosen)
            if len(self.buffers[bucket]) >= self.CHUNK:
                self._flush(bucket)
            self.keys[bucket].frombytes(keys[rows].tobytes())
            self.ids[bucket].frombytes(ids[rows].tobytes())
            self.lengths[bucket].extend(map(len, chosen))
            self.flags[bucket] += flags[rows].tobytes()

    def _flush(self, bucket):
        buffer = self.buffers[bucket]
        if buffer:
            self.file.write(buffer)
            self.chunks[bucket].extend((self.size, len(buffer)))
            self.size += len(buffer)
            buffer.clear()

    def replay(self, skip):
        """(split flags, pieces) runs in output order (by key, and by id for equal keys), without the ids in `skip`
        (sorted)."""
        for bucket in range(len(self.buffers)):
            self._flush(bucket)
        self.file.flush()
        for bucket in range(len(self.buffers)):
            keys, ids, lengths, flags = (np.frombuffer(column[bucket], dtype=dtype) for column, dtype in (
                (self.keys, np.uint64), (self.ids, np.int64), (self.lengths, np.uint32), (self.flags, np.uint8)))
            self.keys[bucket] = self.ids[bucket] = self.lengths[bucket] = self.flags[bucket] = None
            sizes = lengths.astype(np.int64)
            starts = np.cumsum(sizes) - sizes
            chunks = np.frombuffer(self.chunks[bucket], dtype=np.int64).reshape(-1, 2).tolist()
            if self.ordered:
                yield from self._replay_in_slices(chunks, ids, flags, starts, sizes, skip)
            elif len(ids):
                order = np.argsort(keys, kind="stable")
                order = order[~np.isin(ids[order], skip, assume_unique=True)] if len(skip) else order
                blob = memoryview(b"".join(os.pread(self.file.fileno(), length, offset) for offset, length in chunks))
                yield flags[order], [blob[a:a + n] for a, n in zip(starts[order].tolist(), sizes[order].tolist())]
                del blob

    def _replay_in_slices(self, chunks, ids, flags, starts, sizes, skip):
        # The only bucket's chunks lie one after another from the start of the file.
        self.file.seek(chunks[0][0] if chunks else 0)
        for begin in range(0, len(ids), self.REPLAY_ROWS):
            rows = np.arange(begin, min(begin + self.REPLAY_ROWS, len(ids)))
            blob = memoryview(self.file.read(int(sizes[rows].sum())))
            offsets = (starts[rows] - starts[begin]).tolist()
            keep = np.flatnonzero(~np.isin(ids[rows], skip, assume_unique=True)) if len(skip) else np.arange(len(rows))
            yield flags[rows][keep], [blob[offsets[i]:offsets[i] + int(sizes[begin + i])] for i in keep.tolist()]

    def close(self):
        self.file.close()


class _TextSink:
    """Baize JSON / OpenAI JSONL / ShareGPT JSONL: one file per split."""

    def __init__(self, fmt, workdir, splits):
        suffix = formats.EXTENSIONS[fmt]
        self.paths = {split: workdir / "files" / f"{split}{suffix}" for split in splits}
        self.paths[splits[0]].parent.mkdir()
        self.handles = {split: _HashingFile(path) for split, path in self.paths.items()}
        self.writers = {split: formats.CorpusWriter(fmt, handle) for split, handle in self.handles.items()}
        self.written = dict.fromkeys(splits, 0)
        self.encoder = self.writers[splits[0]]

    def encode(self, row):
        _, topic, turns = row
        return self.encoder.encode(topic=topic, turns=orjson.loads(turns))

    def write_many(self, split, pieces):
        self.writers[split].write_many(pieces)
        self.written[split] += len(pieces)

    def close(self):
        for split, writer in self.writers.items():
            writer.close()
            self.handles[split].close()
        # Hashed while written: a gigabyte need not be read again for its sha256.
        self.digests = {self.paths[split]: handle.digest() for split, handle in self.handles.items()}
        return self.paths


class _HashingFile:
    """A binary file that keeps the sha256 and size of what is written to it. Small writes are gathered into
    1 MB blocks; a helper thread hashes and writes the blocks (both release the interpreter), so the caller goes
    on rendering meanwhile. An error in the helper is raised by the next write or close."""

    BLOCK = 1 << 20
    QUEUED_BLOCKS = 2

    def __init__(self, path):
        self.file = open(path, "wb", buffering=0)
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.buffer = bytearray()
        self.blocks = queue.Queue(maxsize=self.QUEUED_BLOCKS)
        self.error = None
        self.thread = threading.Thread(target=self._drain, name=f"export-writer-{path.name}", daemon=True)
        self.thread.start()

    def write(self, data):
        if len(data) >= self.BLOCK:  # already a block: handed on without a copy
            self._flush()
            self._put(data if isinstance(data, bytes) else bytes(data))
        else:
            self.buffer += data
            if len(self.buffer) >= self.BLOCK:
                self._flush()
        return len(data)

    def _flush(self):
        if self.buffer:
            block, self.buffer = self.buffer, bytearray()
            self._put(block)

    def flush(self):
        """Nothing to do: the helper writes the blocks, and close() waits for it (zipfile calls this)."""

    def _put(self, block):
        if self.error is not None:
            raise self.error
        self.blocks.put(block)

    def _drain(self):
        while (block := self.blocks.get()) is not None:
            if self.error is not None:
                continue  # keep taking blocks so the writer never blocks; the error is raised there
            try:
                self.sha256.update(block)
                self.size += len(block)
                view = memoryview(block)
                while view:  # an unbuffered write may take less than it was given
                    view = view[self.file.write(view):]
            except OSError as error:
                self.error = error

    def close(self):
        if self.file.closed:
            return
        try:
            self._flush()
        finally:
            self.blocks.put(None)
            self.thread.join()
            self.file.close()
        if self.error is not None:
            raise self.error

    def digest(self):
        return self.sha256.hexdigest(), self.size


# --- package, deliver, store ---------------------------------------------------------------------------------

def _package(export, workdir, files, digests):
    """The artifact, its name and its (sha256, size): the single file, or a zip of everything (split exports and
    the Hugging Face dataset)."""
    base = f"baize-export-{export.pk}-{export.format}"
    if export.format != formats.HF and len(files) == 1:
        path = next(iter(files.values()))
        return path, base + path.suffix, digests[path]
    archive = workdir / "artifact.zip"
    return archive, base + ".zip", _zip_folder(workdir / "files", archive)


_ZIP_DATE = (2000, 1, 1, 12, 0, 0)  # a fixed entry date, so a zip's bytes depend only on its content


def _zip_folder(folder, archive):
    """Deterministic zip: sorted entries with fixed dates and permissions, hashed as it is written (returns its
    (sha256, size)). Stored, not deflated, like the single file of an unsplit export: compressing a gigabyte would
    cost more time than the whole export. The hashing file cannot seek, so zipfile writes each entry's sizes after
    its data instead of going back for them."""
    entries = sorted(p for p in folder.rglob("*") if p.is_file())
    target = _HashingFile(archive)
    try:
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for path in entries:
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_ZIP_DATE)
                info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
                info.file_size = path.stat().st_size  # lets zipfile choose ZIP64 for a large entry up front
                with open(path, "rb") as source, zf.open(info, "w") as entry:
                    shutil.copyfileobj(source, entry, _HashingFile.BLOCK)
    finally:
        target.close()
    return target.digest()


def output_paths(fmt, out, splits):
    """Where the CLI puts each split: OUT; or NAME.train.EXT / NAME.validation.EXT beside it; or folder OUT (hf)."""
    out = Path(out)
    if fmt == formats.HF:
        return {"": out}
    if len(splits) == 1:
        return {splits[0]: out}
    suffix = out.suffix or formats.EXTENSIONS[fmt]
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {split: out.with_name(f"{stem}.{split}{suffix}") for split in splits}


def _deliver(export, files, out):
    if export.format == formats.HF:
        # Never clear what is there: the command refuses a non-empty folder before it starts.
        shutil.copytree(files["dataset"].parent, out, dirs_exist_ok=True)
        return [out]
    splits = tuple(files)
    destinations = output_paths(export.format, out, splits)
    for split, source in files.items():
        destinations[split].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destinations[split])
    return list(destinations.values())


class _LocalFile(File):
    # FileSystemStorage moves a file that says where it lives instead of copying it.
    def temporary_file_path(self):
        return self.file.name


def _store(artifact, name):
    with open(artifact, "rb") as handle:
        return default_storage.save(name, _LocalFile(handle, name=name))


def _temp_root():
    """Temporary files next to local artifact storage, so the finished file is moved, not copied; the system's
    temporary folder for a remote store (S3), which has no local path."""
    try:
        root = Path(default_storage.path("tmp"))
    except NotImplementedError:
        return None
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:
        return None
