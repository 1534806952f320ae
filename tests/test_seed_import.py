"""Seed import: each format, duplicates, every kind of bad input (named by file and line/row, nothing imported),
--skip-bad, the Celery task, and the import_seeds command. Real Postgres; Parquet and HF datasets built here."""
import gzip
import json
import shutil
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from collection.models import Import, Seed, SeedSet
from collection.seeding import REPORT_LIMIT, seed_import_execute, seed_import_start
from tests.factories import make_seed_set, make_seeds

DATA = Path(__file__).parent / "data" / "seeds"
EXPECTED = [
    "How do I keep basil alive indoors?",
    "What is the difference between a list and a tuple in Python?",
    'How do I write a "hello world" in Rust?',
    "Why does my sourdough not rise?",
]
QUESTIONS = EXPECTED + ["how do I keep   basil alive indoors?"]  # the last one duplicates the first
ONE_MB_LINE = "x" * (1024 * 1024)


def run_import(path, name="garden", **options):
    job = seed_import_start(path=str(path), seed_set_name=name, enqueue=False, **options)
    return seed_import_execute(job.pk)


def texts(name="garden"):
    return list(Seed.objects.filter(seed_set__name=name).order_by("id").values_list("text", flat=True))


def write_parquet(path, questions, **extra_columns):
    pq.write_table(pa.table({"question": questions, **extra_columns}), path, row_group_size=2)
    return path


def write_hf(path, questions):
    import datasets

    datasets.Dataset.from_dict({"question": questions, "topic": ["t"] * len(questions)}).save_to_disk(str(path))
    return path


# --- each format -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("filename, column, first_ref", [
    ("seeds.csv", "question", "seeds.csv:line 2"),
    ("seeds.tsv", "question", "seeds.tsv:line 2"),
    ("seeds.jsonl", "question", "seeds.jsonl:line 1"),
    ("seeds.txt", None, "seeds.txt:line 1"),
])
def test_it_imports_each_text_format(db, filename, column, first_ref):
    job = run_import(DATA / filename, column=column)

    assert job.status == "succeeded", job.error
    assert texts() == EXPECTED
    assert (job.rows_read, job.imported, job.duplicates, job.bad) == (5, 4, 1, 0)
    assert Seed.objects.order_by("id").first().source_ref == first_ref
    assert job.seed_set.name == "garden"


def test_it_imports_parquet_reading_the_chosen_column(db, tmp_path):
    path = write_parquet(tmp_path / "seeds.parquet", QUESTIONS, n=list(range(5)))

    job = run_import(path, column="question")

    assert job.status == "succeeded", job.error
    assert texts() == EXPECTED
    assert (job.imported, job.duplicates) == (4, 1)
    assert list(Seed.objects.order_by("id").values_list("source_ref", flat=True))[:2] == [
        "seeds.parquet:row 1", "seeds.parquet:row 2"]


def test_it_imports_a_hugging_face_dataset_saved_to_disk(db, tmp_path):
    path = write_hf(tmp_path / "quora_hf", QUESTIONS)

    job = run_import(path, column="question")

    assert job.status == "succeeded", job.error
    assert texts() == EXPECTED
    assert Seed.objects.order_by("id").first().source_ref == "quora_hf:row 1"


def test_it_imports_one_split_of_a_dataset_dict(db, tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": EXPECTED})}).save_to_disk(str(tmp_path / "dd"))

    job = run_import(tmp_path / "dd")

    assert job.status == "succeeded", job.error
    assert texts() == EXPECTED


def test_it_imports_gzipped_jsonl_and_strings_per_line(db, tmp_path):
    path = tmp_path / "seeds.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for q in EXPECTED:
            f.write(json.dumps(q) + "\n")

    job = run_import(path)

    assert job.status == "succeeded", job.error
    assert texts() == EXPECTED


def test_it_uses_the_format_given_over_the_file_name(db, tmp_path):
    path = tmp_path / "seeds.data"
    shutil.copy(DATA / "seeds.txt", path)

    job = run_import(path, fmt="txt")

    assert job.status == "succeeded", job.error
    assert texts() == EXPECTED


def test_it_takes_the_text_column_when_none_is_named(db, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("id,text\n1,Why is the sky blue?\n2,How do tides work?\n")

    job = run_import(path)

    assert job.status == "succeeded", job.error
    assert texts() == ["Why is the sky blue?", "How do tides work?"]


# --- duplicates --------------------------------------------------------------------------------------------
def test_it_skips_seeds_already_in_the_set_and_counts_them(db):
    seed_set = make_seed_set("garden", source="quora", tags=["a"])
    make_seeds(seed_set, ["Why does my sourdough not rise?"])

    job = run_import(DATA / "seeds.txt", source="ignored for an existing set", tags=["b", "a"])

    assert job.status == "succeeded", job.error
    assert (job.imported, job.duplicates) == (3, 2)
    assert sorted(texts()) == sorted(EXPECTED)
    seed_set.refresh_from_db()
    assert (seed_set.source, seed_set.tags) == ("quora", ["a", "b"])


def test_it_counts_duplicates_across_batches_of_a_large_file(db, tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"seed {i % 60_000}\n" for i in range(120_000)))

    job = run_import(path)

    assert job.status == "succeeded", job.error
    assert (job.rows_read, job.imported, job.duplicates) == (120_000, 60_000, 60_000)
    assert Seed.objects.filter(seed_set__name="garden").count() == 60_000
    first = Seed.objects.filter(seed_set__name="garden").order_by("id").first()
    assert (first.text, first.source_ref) == ("seed 0", "many.txt:line 1")


def test_it_keeps_the_same_seed_in_two_different_sets(db):
    run_import(DATA / "seeds.txt", name="one")
    job = run_import(DATA / "seeds.txt", name="two")

    assert (job.imported, job.duplicates) == (4, 1)


# --- bad input: named by file and line/row, nothing imported ----------------------------------------------------
def bad_files(tmp_path):
    """(file, options, the exact start of the error)"""
    cases = {}

    def case(name, content, expected, **options):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        cases[name] = (path, options, expected)

    case("utf8.csv", b"question\nfine\nbad \xff\xfe byte\n", "utf8.csv:line 3: invalid UTF-8", column="question")
    case("utf8.jsonl", b'{"text": "fine"}\n{"text": "bad \xff"}\n', "utf8.jsonl:line 2: invalid UTF-8")
    case("utf8.txt", b"fine\nfine too\n\xc3\x28 broken\n", "utf8.txt:line 3: invalid UTF-8")
    case("column.csv", "title,body\nA,B\n", "column.csv:line 1: no column 'question'; the columns are: title, body",
         column="question")
    case("column.tsv", "title\tbody\nA\tB\n", "column.tsv:line 1: no column 'question'; the columns are: title, body",
         column="question")
    case("column.jsonl", '{"question": "fine"}\n{"title": "A"}\n',
         "column.jsonl:line 2: has no field 'question' (it has: title)", column="question")
    case("long.txt", "fine\n" + ONE_MB_LINE + "\nfine too\n", "long.txt:line 2: line longer than 64 KB")
    case("long.jsonl", '{"text": "fine"}\n{"text": "' + ONE_MB_LINE + '"}\n', "long.jsonl:line 2: line longer than 64 KB")
    case("long.csv", "text\nfine\n" + ONE_MB_LINE + "\n", "long.csv:line 3: line longer than 64 KB")
    case("cut.jsonl", '{"text": "fine"}\n{"text": "cut off mid-rec', "cut.jsonl:line 2: the last line is cut off mid-record")
    case("quote.csv", 'text\nfine\n"never closed\nmore\n', "quote.csv:line 3: a quoted field is never closed")
    case("empty.csv", "", "empty.csv: the file is empty")
    case("empty.jsonl", "", "empty.jsonl: the file is empty")
    case("empty.txt", "", "empty.txt: the file is empty")
    case("blank.txt", "\n  \n\n", "blank.txt: the file is empty")
    case("header.csv", "text\n", "header.csv: the file has a header but no rows")
    case("notjson.jsonl", '{"text": "fine"}\n{text: nope}\n', "notjson.jsonl:line 2: not valid JSON")
    case("number.jsonl", '{"text": "fine"}\n{"text": 42}\n', "number.jsonl:line 2: 'text' holds a number, not text")
    case("fields.csv", "text\nfine\nnot,quoted\n", "fields.csv:line 3: has 2 fields, the header has 1")
    case("space.csv", "text\nfine\n\"   \"\n", "space.csv:line 3: empty seed")

    truncated = tmp_path / "good.parquet"
    write_parquet(truncated, QUESTIONS)
    case("truncated.parquet", truncated.read_bytes()[:-100], "truncated.parquet: not a readable Parquet file")
    empty_parquet = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), empty_parquet)
    cases["empty.parquet"] = (empty_parquet, {}, "empty.parquet: the dataset has no rows")
    column_parquet = write_parquet(tmp_path / "column.parquet", QUESTIONS)
    cases["column.parquet"] = (column_parquet, {"column": "title"},
                               "column.parquet: no column 'title'; the columns are: question")
    null_parquet = write_parquet(tmp_path / "null.parquet", ["fine", None])
    cases["null.parquet"] = (null_parquet, {}, "null.parquet:row 2: no value in 'question'")
    gz = tmp_path / "cut.txt.gz"
    compressed = gzip.compress("".join(f"seed number {i * 7919 % 100_003}\n" for i in range(20_000)).encode())
    gz.write_bytes(compressed[: len(compressed) // 2])
    cases["cut.txt.gz"] = (gz, {}, "cut.txt.gz:line")  # the line where the data stops
    return cases


BAD_CASES = [
    "utf8.csv", "utf8.jsonl", "utf8.txt", "column.csv", "column.tsv", "column.jsonl", "long.txt", "long.jsonl",
    "long.csv", "cut.jsonl", "quote.csv", "empty.csv", "empty.jsonl", "empty.txt", "blank.txt", "header.csv",
    "notjson.jsonl", "number.jsonl", "fields.csv", "space.csv", "truncated.parquet", "empty.parquet",
    "column.parquet", "null.parquet", "cut.txt.gz",
]


@pytest.mark.parametrize("name", BAD_CASES)
def test_it_fails_a_bad_file_naming_file_and_line_and_imports_nothing(db, tmp_path, name):
    path, options, expected = bad_files(tmp_path)[name]

    job = run_import(path, name="fresh", **options)

    assert job.status == "failed"
    assert job.error.startswith(expected), job.error
    assert job.imported == 0 and job.finished_at is not None
    assert not SeedSet.objects.filter(name="fresh").exists()
    assert Seed.objects.count() == 0


def test_it_fails_a_truncated_hugging_face_dataset(db, tmp_path):
    path = write_hf(tmp_path / "hf", [f"seed {i}" for i in range(20_000)])
    arrow = next(path.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])

    job = run_import(path, column="question")

    assert job.status == "failed"
    assert job.error.startswith("hf: cannot open the dataset (truncated or corrupt?)"), job.error
    assert Seed.objects.count() == 0


def test_it_names_the_columns_of_a_dataset_when_the_column_is_missing(db, tmp_path):
    path = write_hf(tmp_path / "hf", ["a", "b"])

    job = run_import(path, column="text")

    assert job.error == "hf: no column 'text'; the columns are: question, topic"


def test_it_leaves_an_existing_set_unchanged_when_an_import_fails(db, tmp_path):
    seed_set = make_seed_set("garden", tags=["old"])
    make_seeds(seed_set, ["Already here"])
    path = tmp_path / "late.txt"
    path.write_bytes(b"new one\nanother\n" * 1000 + b"\xff\n")

    job = run_import(path, tags=["new"])

    assert job.status == "failed"
    assert job.error.startswith("late.txt:line 2001: invalid UTF-8")
    assert texts() == ["Already here"]
    seed_set.refresh_from_db()
    assert seed_set.tags == ["old"]
    assert job.seed_set == seed_set  # the history of the set shows the failed attempt


# --- --skip-bad --------------------------------------------------------------------------------------------
def test_it_imports_the_good_rows_and_reports_the_bad_with_skip_bad(db, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"text": "How do tides work?"}\n'
        b'{"text": "bad \xff"}\n'
        b'{"title": "no text"}\n'
        + b'{"text": "' + ONE_MB_LINE.encode() + b'"}\n'
        b'{"text": "how do  tides work?"}\n'
        b'{"text": "Why is the sky blue?"}\n'
        b'{"text": "cut'
    )

    job = run_import(path, skip_bad=True)

    assert job.status == "succeeded", job.error
    assert texts() == ["How do tides work?", "Why is the sky blue?"]
    assert (job.rows_read, job.imported, job.duplicates, job.bad) == (7, 2, 1, 4)
    assert [r["where"] for r in job.report] == ["mixed.jsonl:line 2", "mixed.jsonl:line 3", "mixed.jsonl:line 4",
                                               "mixed.jsonl:line 7"]
    assert "invalid UTF-8" in job.report[0]["error"]
    assert "line longer than 64 KB" in job.report[2]["error"]


def test_it_caps_the_report_but_counts_every_bad_row(db, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good seed\n" + b"\xff\n" * (REPORT_LIMIT + 500))

    job = run_import(path, skip_bad=True)

    assert job.status == "succeeded", job.error
    assert job.bad == REPORT_LIMIT + 500
    assert len(job.report) == REPORT_LIMIT
    assert job.imported == 1


def test_it_fails_when_every_row_is_bad_even_with_skip_bad(db, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\n\xfe\n")

    job = run_import(path, skip_bad=True)

    assert job.status == "failed"
    assert job.error == "bad.txt: no seeds found in the file (all 2 rows were bad)"
    assert [r["where"] for r in job.report] == ["bad.txt:line 1", "bad.txt:line 2"]
    assert not SeedSet.objects.filter(name="garden").exists()


def test_it_still_fails_a_whole_file_problem_with_skip_bad(db, tmp_path):
    job = run_import(DATA / "seeds.csv", column="nope", skip_bad=True)

    assert job.status == "failed"
    assert job.error.startswith("seeds.csv:line 1: no column 'nope'; the columns are: question, topic")


# --- job handling ------------------------------------------------------------------------------------------
def test_it_runs_through_the_celery_task_once_committed(db, eager, django_capture_on_commit_callbacks, admin_user):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job = seed_import_start(path=str(DATA / "seeds.txt"), seed_set_name="garden", created_by=admin_user,
                                source="quora", tags=["q"])
        assert Import.objects.get(pk=job.pk).status == "queued"

    assert len(callbacks) == 1
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert (job.seed_set.source, job.seed_set.tags, job.seed_set.created_by) == ("quora", ["q"], admin_user)
    assert texts() == EXPECTED


def test_it_does_not_run_a_finished_import_again(db):
    job = run_import(DATA / "seeds.txt")

    again = seed_import_execute(job.pk)

    assert again.status == "succeeded"
    assert (again.imported, Seed.objects.count()) == (4, 4)


def test_it_refuses_to_start_without_a_set_name_or_with_an_unknown_format(db):
    from collection.seeding import SeedImportError

    with pytest.raises(SeedImportError, match="seed set: a name is required"):
        seed_import_start(path=str(DATA / "seeds.txt"), seed_set_name="  ", enqueue=False)
    with pytest.raises(SeedImportError, match="format: 'xml' is not one of"):
        seed_import_start(path=str(DATA / "seeds.txt"), seed_set_name="x", fmt="xml", enqueue=False)
    assert Import.objects.count() == 0


def test_it_fails_clearly_for_a_missing_file(db, tmp_path):
    job = run_import(tmp_path / "nowhere.csv")

    assert job.status == "failed"
    assert job.error == "nowhere.csv: no such file or folder"


def test_it_stores_backslashes_and_unicode_unchanged(db, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("C:\\temp\\new folder \\t not a tab\nÜber café — 東京?\n", encoding="utf-8")

    job = run_import(path)

    assert job.status == "succeeded", job.error
    assert texts() == ["C:\\temp\\new folder \\t not a tab", "Über café — 東京?"]


# --- the command -------------------------------------------------------------------------------------------
def test_it_imports_from_the_command_line_and_prints_counts(db, capsys):
    call_command("import_seeds", str(DATA / "seeds.csv"), "--set", "garden", "--column", "question",
                 "--source", "quora", "--tags", "a, b")

    out = capsys.readouterr().out
    assert "4 imported, 1 duplicates skipped, 0 bad, 5 rows read" in out
    seed_set = SeedSet.objects.get(name="garden")
    assert (seed_set.source, seed_set.tags) == ("quora", ["a", "b"])
    assert texts() == EXPECTED


def test_it_exits_with_the_located_error_from_the_command_line(db, tmp_path):
    path = tmp_path / "broken.csv"
    path.write_bytes(b"text\nfine\n\xff\n")

    with pytest.raises(CommandError, match=r"broken.csv:line 3: invalid UTF-8.*\nNothing was imported"):
        call_command("import_seeds", str(path), "--set", "garden")
    assert not SeedSet.objects.filter(name="garden").exists()


def test_it_prints_the_bad_row_report_with_skip_bad(db, tmp_path, capsys):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"one\n\xff\ntwo\n")

    call_command("import_seeds", str(path), "--set", "garden", "--skip-bad")

    out = capsys.readouterr().out
    assert "Bad rows (1):\n  mixed.txt:line 2: invalid UTF-8" in out
    assert "2 imported, 0 duplicates skipped, 1 bad" in out


def test_it_refuses_a_missing_path_on_the_command_line(db, tmp_path):
    with pytest.raises(CommandError, match="nowhere.txt: no such file or folder"):
        call_command("import_seeds", str(tmp_path / "nowhere.txt"), "--set", "garden")
    assert Import.objects.count() == 0


# --- stale imports -----------------------------------------------------------------------------------------
def test_it_requeues_an_import_whose_worker_went_silent(db, eager, django_capture_on_commit_callbacks):
    from django.utils import timezone

    from collection.seeding import seed_imports_recover_stale

    job = seed_import_start(path=str(DATA / "seeds.txt"), seed_set_name="garden", enqueue=False)
    long_ago = timezone.now() - timedelta(hours=1)
    Import.objects.filter(pk=job.pk).update(status="running", started_at=long_ago, heartbeat_at=long_ago)
    fresh = seed_import_start(path=str(DATA / "seeds.txt"), seed_set_name="other", enqueue=False)
    Import.objects.filter(pk=fresh.pk).update(status="running", started_at=timezone.now(), heartbeat_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        assert seed_imports_recover_stale() == 1

    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert texts() == EXPECTED
    assert Import.objects.get(pk=fresh.pk).status == "running"


def test_it_rolls_back_an_attempt_that_another_worker_took_over(db):
    from collection import seeding

    job = seed_import_start(path=str(DATA / "seeds.txt"), seed_set_name="garden", enqueue=False)
    assert job.claim()
    # Meanwhile the sweep gave up on this attempt and another worker claimed the import.
    Import.objects.filter(pk=job.pk).update(started_at=job.started_at + timedelta(seconds=90))

    with pytest.raises(seeding._Superseded):
        seeding._run(job, str(DATA / "seeds.txt"), seeding._Tally(skip_bad=False))

    assert Seed.objects.count() == 0
    assert not SeedSet.objects.filter(name="garden").exists()
    assert Import.objects.get(pk=job.pk).status == "running"
