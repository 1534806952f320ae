"""Corpus export: the dialogues a filter picks, written as a training file and kept as a record.

What a user gets: `export_start` records an Export (its spec: the review queue's filters plus export options) and
queues it; `export_execute` writes the file into artifact storage with its sha256, counts and progress on the row.
Options (all recorded in the spec, with their defaults):
  status "approved"; include_flagged False (flagged dialogues are left out); dedupe True (near-duplicates collapsed
  to the lowest id, collection.filters.near_duplicate_groups); val_fraction 0 (share of seeds in the validation
  split: split by a hash of the seed text, or the topic without a seed, so no seed is on both sides); shuffle True
  with shuffle_seed 0 (order by a hash of (shuffle_seed, id)).
The same spec on unchanged data gives a byte-identical file.

Artifacts: one file for Baize JSON / OpenAI JSONL / ShareGPT JSONL; a .zip of train + validation files when
val_fraction > 0; for the Hugging Face format a .zip holding dataset/ (datasets.load_from_disk: a DatasetDict with
"train" and, when split, "validation") and parquet/<split>.parquet, columns id, topic, messages, seed_set, source,
split.

How it runs, with flat memory (1,000,000 dialogues under 300 MB, bench/export.py):
  1. count: one aggregate query (matched, flagged, without turns); with dedupe, one streamed pass over the texts
     finds the near-duplicates to leave out (a set of ids).
  2. read: the rows are read once, in id order, in keyset pages (like COPY, no random access), the next page by a
     helper thread while this one is rendered (collection.formats); each row's split comes from a hash of its
     seed text (or topic), its shuffled place from a hash of (shuffle_seed, id).
  3. write: in id order straight to the file(s); shuffled, through a spool of bucket files on local disk (ranges
     of the shuffle hash), replayed bucket by bucket in order. The sha256 is computed as the file is written.
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
from collection.models import Export, JobStatus
from collection.selection import SelectionError, clean_spec, select_dialogues

log = logging.getLogger(__name__)

STREAM_CHUNK = 5000  # rows per keyset page
# The shuffle spool: about one bucket file per BUCKET_ROWS rows (a power of two, at most MAX_BUCKETS), so
# replaying one bucket holds about 15 MB (10,000 rows of ~1.5 KB) at a million dialogues.
BUCKET_ROWS = 10_000
MAX_BUCKETS = 256
PROGRESS_SECONDS = 1.0
DEFAULT_OPTIONS = {
    "include_flagged": False,
    "dedupe": True,
    "dedupe_threshold": 0.85,
    "dedupe_num_perm": 128,
    "val_fraction": 0.0,
    "shuffle": True,
    "shuffle_seed": 0,
}
SPLITS = ("train", "validation")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# A fixed file date (local noon, 2000-01-01), so a zip's bytes depend only on its content.
_MASK64 = (1 << 64) - 1
_ZIP_EPOCH = time.mktime((2000, 1, 1, 12, 0, 0, 0, 0, -1))


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
    if raw.get("dedupe_num_perm") not in (None, ""):
        options["dedupe_num_perm"] = _number(raw["dedupe_num_perm"], "dedupe_num_perm", int, 16, 1024)
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
            artifact, name = _package(export, workdir, files)
            if out is not None:
                counts["out"] = [str(p) for p in _deliver(export, files, Path(out))]
            sha256, size = digests.get(artifact) or _digest(artifact)
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
    aggregate query, before the rows are read."""
    excludes = _excludes_flagged(spec)
    empty = Q(num_turns=0, is_flagged=False) if excludes else Q(num_turns=0)
    counts = select_dialogues(_selection_of(spec)).order_by().aggregate(
        selected=Count("id"), flagged=Count("id", filter=Q(is_flagged=True)), skipped_empty=Count("id", filter=empty))
    return {"selected": counts["selected"], "excluded_flagged": counts["flagged"] if excludes else 0,
            "skipped_empty": counts["skipped_empty"]}


def _rows(queryset):
    """Every row of `queryset` (a values_list starting with id), in id order, in pages."""
    pages = _pages(queryset)
    # Outside a transaction the next page is read by a helper thread (its own connection) while this one is
    # rendered: the database and Python work side by side. Inside one (a test, a caller's atomic block) another
    # connection could not see the rows, so the pages are read here.
    for rows in (pages if connection.in_atomic_block else _read_ahead(pages)):
        yield from rows


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


_DONE = object()


def _read_ahead(pages, depth=2):
    """Iterate `pages` in a helper thread, at most `depth` pages ahead; its errors are raised here."""
    ready = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item):
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for page in pages:
                if not offer(page):
                    return
            offer(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the reading thread, which raises it
            offer(error)
        finally:
            connections.close_all()  # this thread's own connection

    worker = threading.Thread(target=work, name="export-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _near_duplicates(export, spec):
    """Ids to leave out: near-copies of a dialogue with a lower id (collection.filters.near_duplicate_groups)."""
    from collection.filters import near_duplicate_groups

    queryset = _candidates(spec).annotate(turns_text=Cast("turns", output_field=TextField())).values_list(
        "id", "turns_text")

    def texts():
        for number, (pk, turns) in enumerate(_rows(queryset)):
            if number % STREAM_CHUNK == 0:
                export.beat()
            yield pk, "\n".join(t["text"] for t in orjson.loads(turns))

    groups = near_duplicate_groups(texts(), threshold=spec["dedupe_threshold"], num_perm=spec["dedupe_num_perm"])
    return set(groups)


def _shuffle_key(pk, seed_mix):
    """A fixed 64-bit hash of (shuffle seed, id), SplitMix64's finaliser: the order is the same on every machine,
    and adding rows keeps the relative order of the old ones."""
    x = (pk + seed_mix) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _split_is_validation(key, threshold):
    """Validation when the hash of the seed text (or the topic) falls under val_fraction: every dialogue of one
    seed lands on the same side."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < threshold


# --- write ------------------------------------------------------------------------------------------------

def _write(export, workdir):
    """Read the rows once, in id order (like COPY), render each as it comes, and write them: straight to the
    file(s) in id order, or through the spool when shuffled (output order: by _shuffle_key)."""
    spec = export.spec
    started = time.monotonic()
    counts = _selection_counts(spec)
    duplicates = _near_duplicates(export, spec) if spec["dedupe"] else set()
    counts["collapsed_near_duplicates"] = len(duplicates)
    total = max(counts["selected"] - counts["excluded_flagged"] - counts["skipped_empty"] - len(duplicates), 0)
    Export.objects.filter(pk=export.pk).update(total=total, progress=0, heartbeat_at=timezone.now())
    planned = time.monotonic()

    val_fraction = spec["val_fraction"]
    splits = SPLITS if val_fraction > 0 else ("train",)
    threshold = int(val_fraction * 2**64)
    hf = export.format == formats.HF
    sink = export_hf.HfSink(workdir, splits) if hf else _TextSink(export.format, workdir, splits)
    fields = ["id", "topic", "turns_text"] + (["seed_set__name", "source"] if hf else [])
    if val_fraction > 0:
        fields.append("seed__text")
    queryset = _candidates(spec).annotate(turns_text=Cast("turns", output_field=TextField())).values_list(*fields)
    width = 5 if hf else 3
    spool = _Spool(workdir / "spool", total) if spec["shuffle"] else None
    seed_mix = (spec["shuffle_seed"] * 0x9E3779B97F4A7C15) & _MASK64
    seen = 0
    next_report = time.monotonic() + PROGRESS_SECONDS
    try:
        for row in _rows(queryset):
            pk = row[0]
            if pk in duplicates:
                continue
            flag = 0
            if threshold:
                seed_text = row[width]
                flag = _split_is_validation(seed_text if seed_text is not None else row[1], threshold)
            data = sink.encode(row[:width])
            if spool is None:
                sink.write_encoded(SPLITS[flag], data)
            else:
                spool.add(_shuffle_key(pk, seed_mix), flag, data)
            seen += 1
            if time.monotonic() >= next_report:
                Export.objects.filter(pk=export.pk).update(progress=seen, heartbeat_at=timezone.now())
                next_report = time.monotonic() + PROGRESS_SECONDS
        read = time.monotonic()
        if spool is not None:
            for flag, data in spool.replay():
                sink.write_encoded(SPLITS[flag], data)
    finally:
        files = sink.close()
        if spool is not None:
            spool.close()
    counts.update(train=sink.written["train"], validation=sink.written.get("validation", 0),
                  written=sum(sink.written.values()))
    # Where the time went, for the page and the benchmark (not part of the file).
    counts["seconds"] = {"count_and_dedupe": round(planned - started, 2), "read_and_render": round(read - planned, 2),
                         "shuffle_and_finish": round(time.monotonic() - read, 2)}
    return counts, files, getattr(sink, "digests", {})


class _Spool:
    """Puts rows read in id order into shuffled order without holding them in memory: each rendered row is
    appended to the bucket file its shuffle key falls in (buckets are ranges of the 64-bit key, so they fill
    evenly); then each bucket (a bounded slice of the output) is read, sorted by key and written. Two sequential
    passes over local disk instead of one random database read per row. Per row, memory keeps its key, length and
    split: 13 bytes."""

    def __init__(self, folder, total):
        folder.mkdir()
        needed = min(MAX_BUCKETS, max(1, -(-total // BUCKET_ROWS)))
        # 2**bits buckets (a power of two, at most MAX_BUCKETS): the top bits of the key pick one.
        self.bits = min((needed - 1).bit_length(), MAX_BUCKETS.bit_length() - 1)
        count = 1 << self.bits
        self.files = [open(folder / f"{n:05d}.bin", "wb", buffering=1 << 16) for n in range(count)]
        self.keys = [array("Q") for _ in range(count)]
        self.lengths = [array("I") for _ in range(count)]
        self.flags = [bytearray() for _ in range(count)]

    def add(self, key, flag, data):
        bucket = key >> (64 - self.bits) if self.bits else 0
        self.files[bucket].write(data)
        self.keys[bucket].append(key)
        self.lengths[bucket].append(len(data))
        self.flags[bucket].append(flag)

    def replay(self):
        """(split flag, data) in output order: by key, and by id (arrival order) for equal keys."""
        for number, handle in enumerate(self.files):
            handle.close()
            path = Path(handle.name)
            keys, lengths, flags = self.keys[number], self.lengths[number], self.flags[number]
            self.keys[number] = self.lengths[number] = self.flags[number] = None
            if not flags:
                path.unlink()
                continue
            blob = memoryview(path.read_bytes())
            path.unlink()
            sizes = np.frombuffer(lengths, dtype=np.uint32).astype(np.int64)
            starts = np.cumsum(sizes) - sizes
            order = np.argsort(np.frombuffer(keys, dtype=np.uint64), kind="stable")
            for row, start, size in zip(order.tolist(), starts[order].tolist(), sizes[order].tolist()):
                yield flags[row], blob[start:start + size]
            del blob, sizes, starts, order

    def close(self):
        for handle in self.files:
            handle.close()


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

    def write_encoded(self, split, data):
        self.writers[split].write_encoded(data)
        self.written[split] += 1

    def close(self):
        for split, writer in self.writers.items():
            writer.close()
            self.handles[split].close()
        # Hashed while written: a gigabyte need not be read again for its sha256.
        self.digests = {self.paths[split]: handle.digest() for split, handle in self.handles.items()}
        return self.paths


class _HashingFile:
    """A binary file that keeps the sha256 and size of what is written to it. Small writes are gathered into
    1 MB blocks first: hashing and writing a block costs far less than a call per record."""

    BLOCK = 1 << 20

    def __init__(self, path):
        self.file = open(path, "wb", buffering=0)
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.buffer = bytearray()

    def write(self, data):
        self.buffer += data
        if len(self.buffer) >= self.BLOCK:
            self._flush()

    def _flush(self):
        self.sha256.update(self.buffer)
        self.size += len(self.buffer)
        self.file.write(self.buffer)
        self.buffer.clear()

    def close(self):
        if not self.file.closed:
            self._flush()
            self.file.close()

    def digest(self):
        return self.sha256.hexdigest(), self.size


# --- package, deliver, store ---------------------------------------------------------------------------------

def _package(export, workdir, files):
    """The artifact: the single file, or a zip of everything (split exports and the Hugging Face dataset)."""
    base = f"baize-export-{export.pk}-{export.format}"
    if export.format != formats.HF and len(files) == 1:
        path = next(iter(files.values()))
        return path, base + path.suffix
    archive = workdir / "artifact.zip"
    _zip_folder(workdir / "files", archive)
    return archive, base + ".zip"


def _zip_folder(folder, archive):
    """Deterministic zip: sorted entries with fixed dates and permissions. Stored, not deflated, like the single
    file of an unsplit export: compressing a gigabyte would cost more time than the whole export."""
    entries = sorted(p for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in entries:
            os.chmod(path, 0o644)
            os.utime(path, (_ZIP_EPOCH, _ZIP_EPOCH))
            zf.write(path, path.relative_to(folder).as_posix())


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


def _digest(path):
    return _file_sha256(path), os.path.getsize(path)


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _temp_root():
    """Temporary files next to local artifact storage, so the finished file is moved, not copied."""
    location = getattr(default_storage, "location", None)
    if location:
        root = Path(location) / "tmp"
        try:
            root.mkdir(parents=True, exist_ok=True)
            return root
        except OSError:
            pass
    return None
