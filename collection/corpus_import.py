"""Corpus import: dialogues a team already has become a seed set plus dialogues, ready for review.

What a user gets: a file in the published Baize layout (a JSON list of {"topic", "input"}), OpenAI chat JSONL or
ShareGPT JSONL is read record by record (never whole into memory) into the seed set `seed_set_name` (created if
new). Each record becomes a seed (the Baize topic, or the first human message) and a dialogue with its source
recorded ("import:<format>:<file>"), its turns validated, original turns == turns, status undecided, and the
per-dialogue automatic filters applied (collection.filters.check_dialogue; near-duplicates are flagged by the
corpus pass queued after the import commits).

All or nothing: the first bad record fails the import with "<file>:record N: <field>: <what is wrong>" (JSONL:
"<file>:line N") and nothing is imported. Import then export in the same format gives the same dialogues, turn by
turn, text unchanged (collection.formats renders and parses as exact inverses).
"""
import logging
import os
from pathlib import Path

import ijson
from django.db import transaction
from django.utils import timezone

from collection import formats
from collection.exporting import keep_alive
from collection.filters import check_dialogue
from collection.models import Dialogue, DialogueFlag, Import, JobStatus, Seed, SeedSet, normalize_seed_text, seed_hash
from collection.readers import ReaderError, iter_records
from collection.seeding import ImportProgress as _Progress, local_file

log = logging.getLogger(__name__)

BATCH = 1000
# A dialogue line is far longer than a seed line: allow long conversations, still bounded.
MAX_LINE_BYTES = 32 * 1024 * 1024
MIN_TURNS = 2
_SOURCE_MAX = Dialogue._meta.get_field("source").max_length
_SOURCE_REF_MAX = Seed._meta.get_field("source_ref").max_length
_BOM = b"\xef\xbb\xbf"


class CorpusImportError(ValueError):
    """A bad request (names the field) or a bad record (names the file, record and field)."""


def corpus_import_start(*, path, fmt, seed_set_name, created_by=None, filename=None, language="", enqueue=True):
    """Record an import of `path` (a local path, or a name in artifact storage such as an upload) and queue it
    (task collection.import_corpus) once the transaction commits. Returns the Import row to follow."""
    if fmt not in formats.TEXT_FORMATS:
        raise CorpusImportError(f"format: {fmt!r} is not one of {', '.join(formats.TEXT_FORMATS)}")
    seed_set_name = (seed_set_name or "").strip()
    if not seed_set_name:
        raise CorpusImportError("seed set: a name is required")
    if len(seed_set_name) > SeedSet._meta.get_field("name").max_length:
        raise CorpusImportError("seed set: the name is longer than 200 characters")
    language = (language or "").strip()
    if len(language) > Dialogue._meta.get_field("language").max_length:
        raise CorpusImportError("language: use an ISO 639-1 code such as 'en'")
    path = os.fspath(path)
    job = Import.objects.create(
        kind=Import.Kind.CORPUS, seed_set=SeedSet.objects.filter(name=seed_set_name).first(),
        seed_set_name=seed_set_name, filename=(filename or Path(path).name)[:500], path=path, format=fmt,
        column=language, created_by=created_by,
    )
    if enqueue:
        from collection.tasks import import_corpus

        transaction.on_commit(lambda: import_corpus.delay(job.pk))
    return job


def corpus_import(*, path, fmt, seed_set_name, created_by=None, filename=None, language=""):
    """Import a corpus file now, in this process (the CLI). Returns the finished Import: status succeeded, or
    failed with the error naming file, record and field."""
    job = corpus_import_start(path=path, fmt=fmt, seed_set_name=seed_set_name, created_by=created_by,
                              filename=filename, language=language, enqueue=False)
    return corpus_import_execute(job.pk)


def corpus_import_execute(import_id):
    """Claim the queued corpus Import and run it; the outcome is on the row (never raised)."""
    job = Import.objects.filter(pk=import_id, kind=Import.Kind.CORPUS).first()
    if job is None or not job.claim():
        return job
    progress = _Progress(job.pk)
    try:
        with keep_alive(job), local_file(job.path) as local_path:
            seed_set = _run(job, local_path, progress)
    except (CorpusImportError, ReaderError) as error:
        _fail(job, str(error))
    except Exception as error:  # noqa: BLE001 - the row must not stay "running"; the traceback goes to the log
        log.exception("corpus import %s failed", job.pk)
        _fail(job, f"{job.filename}: the import stopped on an unexpected error ({type(error).__name__}: {error})")
    else:
        from collection.tasks import flag_near_duplicates

        seed_set_id = seed_set.pk
        transaction.on_commit(lambda: flag_near_duplicates.delay(seed_set_id))
    finally:
        progress.close()
    job.refresh_from_db()
    return job


def _fail(job, message):
    now = timezone.now()
    Import.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, error=message[:5000], finished_at=now,
                                            heartbeat_at=now, imported=0, duplicates=0, bad=1,
                                            report=[{"where": job.filename, "error": message[:1000]}])


# --- reading ------------------------------------------------------------------------------------------------

def iter_corpus(path, fmt, *, name):
    """(where, record, ParsedRecord) for every record; raises CorpusImportError naming file, record and field."""
    records = _baize_records(path, name) if fmt == formats.BAIZE else _jsonl_records(path, name)
    count = 0
    for where, record in records:
        count += 1
        try:
            parsed = formats.parse_record(fmt, record)
        except formats.FormatError as error:
            raise CorpusImportError(f"{where}: {error}") from None
        yield where, record, parsed
    if not count:
        raise CorpusImportError(f"{name}: no records found")


def _jsonl_records(path, name):
    yield from iter_records(path, "jsonl", name=name, max_line_bytes=MAX_LINE_BYTES)


def _baize_records(path, name):
    """Stream the items of a JSON list with ijson: a million dialogues never sit in memory at once."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
        start = len(_BOM) if head.startswith(_BOM) else 0
        if not head[start:].strip():
            raise CorpusImportError(f"{name}: the file is empty")
        if not head[start:].lstrip().startswith(b"["):
            raise CorpusImportError(f"{name}: expected a JSON list of {{\"topic\", \"input\"}} records "
                                    "(the Baize data layout)")
        handle.seek(start)
        number = 0
        items = ijson.items(handle, "item", use_float=True)
        while True:
            try:
                record = next(items)
            except StopIteration:
                return
            except ijson.JSONError as error:
                raise CorpusImportError(f"{name}:record {number + 1}: not valid JSON ({_first_line(error)})") from None
            number += 1
            yield f"{name}:record {number}", record


def _first_line(error):
    text = error.args[0] if error.args else str(error)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line = str(text).strip().splitlines()[0] if str(text).strip() else type(error).__name__
    if "premature EOF" in line:
        line += ": the file is cut off (truncated?)"
    return line


# --- writing ------------------------------------------------------------------------------------------------

def _run(job, local_path, progress):
    source = f"import:{job.format}:{job.filename}"[:_SOURCE_MAX]
    records = iter_corpus(local_path, job.format, name=job.filename)
    language = job.column  # the corpus's language for the wrong_language rule ("" = not judged)
    read = imported = repeated = 0
    with transaction.atomic():
        seed_set, _ = SeedSet.objects.get_or_create(
            name=job.seed_set_name, defaults={"source": source[:200], "created_by": job.created_by})
        batch = []
        for where, record, parsed in records:
            read += 1
            seed_text = normalize_seed_text(parsed.topic)
            if not seed_text:
                field = "topic" if job.format == formats.BAIZE else "the first human message"
                raise CorpusImportError(f"{where}: {field}: empty, but it is the seed of the dialogue")
            # The raw output the review page shows: the transcript as the file had it.
            raw = record["input"] if job.format == formats.BAIZE else formats.dumps(record)
            if "\x00" in parsed.topic or "\x00" in raw or any("\x00" in t["text"] for t in parsed.turns):
                raise CorpusImportError(f"{where}: contains a NUL character, which the database cannot store")
            batch.append((where, parsed, seed_text, raw))
            if len(batch) >= BATCH:
                created, reused = _insert(batch, seed_set, source, language, job.format)
                imported, repeated = imported + created, repeated + reused
                batch = []
                progress.update(read)
        created, reused = _insert(batch, seed_set, source, language, job.format)
        imported, repeated = imported + created, repeated + reused
        now = timezone.now()
        # Counts and status commit with the dialogues: nobody sees "succeeded" without them.
        Import.objects.filter(pk=job.pk).update(
            status=JobStatus.SUCCEEDED, finished_at=now, heartbeat_at=now, error="", seed_set=seed_set,
            rows_read=read, imported=imported, duplicates=repeated, bad=0, report=[])
    return seed_set


def _insert(batch, seed_set, source, language, fmt):
    """Seeds (get or create by hash) and dialogues with their filter flags for one batch of parsed records.
    Returns (dialogues created, records whose seed was already in the set)."""
    if not batch:
        return 0, 0
    hashes = {}
    for where, _, seed_text, _ in batch:
        hashes.setdefault(seed_hash(seed_text), (seed_text, where))
    existing = dict(Seed.objects.filter(seed_set=seed_set, text_hash__in=list(hashes))
                    .values_list("text_hash", "id"))
    Seed.objects.bulk_create(
        [Seed(seed_set=seed_set, text=text, text_hash=digest, source_ref=where[:_SOURCE_REF_MAX])
         for digest, (text, where) in hashes.items() if digest not in existing],
        ignore_conflicts=True,
    )
    seed_ids = dict(Seed.objects.filter(seed_set=seed_set, text_hash__in=list(hashes)).values_list("text_hash", "id"))
    dialogues, verdicts = [], []
    reused = 0
    seen_here = set()
    for where, parsed, seed_text, raw in batch:
        digest = seed_hash(seed_text)
        if digest in existing or digest in seen_here:
            reused += 1
        seen_here.add(digest)
        hits = check_dialogue(turns=parsed.turns, seed_text=seed_text, language=language, min_turns=MIN_TURNS)
        dialogue = Dialogue(
            seed_set=seed_set, seed_id=seed_ids[digest], source=source, topic=parsed.topic,
            original_turns=parsed.turns, raw_output=raw, language=language,
            generation={"imported": {"format": fmt, "record": where, **parsed.extra}},
            status=Dialogue.Status.UNDECIDED, is_flagged=bool(hits),
        )
        dialogue.set_turns([dict(t) for t in parsed.turns])
        dialogues.append(dialogue)
        verdicts.append(hits)
    Dialogue.objects.bulk_create(dialogues)
    DialogueFlag.objects.bulk_create(
        DialogueFlag(dialogue_id=d.pk, rule=rule, reason=reason[:500])
        for d, hits in zip(dialogues, verdicts) for rule, reason in hits
    )
    return len(dialogues), reused

