"""Corpus export: selection and options, counts, split by seed, shuffle, byte-identical files, artifacts, the task
and the export_corpus command. Real Postgres, real files in a temporary artifact folder."""
import hashlib
import io
import json
import zipfile

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from collection import formats
from collection.exporting import ExportError, export_execute, export_spec_clean, export_start
from collection.models import Dialogue, DialogueFlag, Export, GenerationRun
from tests.factories import make_dialogue, make_endpoint, make_seed_set, make_seeds, make_template


def turns_for(i, words=("basil", "tomato", "pepper", "onion", "garlic", "leek", "kale", "chard")):
    # Distinct vocabulary per dialogue so near-duplicate detection only collapses the planted copies.
    w = [f"{words[i % len(words)]}{i}x{k}" for k in range(12)]
    return [{"role": "human", "text": f"Question {i}: " + " ".join(w[:6])},
            {"role": "ai", "text": f"Answer {i}: " + " ".join(w[6:])}]


def run_export(fmt="openai", **spec):
    export = export_start(fmt=fmt, spec=spec, enqueue=False)
    return export_execute(export.pk)


def artifact_bytes(export):
    with default_storage.open(export.path, "rb") as handle:
        return handle.read()


def jsonl(data):
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def first_texts(records):
    return sorted(r["messages"][0]["content"] for r in records)


@pytest.fixture
def corpus(db):
    seed_set = make_seed_set("garden")
    dialogues = {}
    for i, status in enumerate(["approved", "approved", "approved", "undecided", "rejected"]):
        dialogues[i] = make_dialogue(seed_set, turns=turns_for(i), topic=f"topic {i}", status=status)
    flagged = make_dialogue(seed_set, turns=turns_for(5), topic="topic 5", status="approved", is_flagged=True)
    DialogueFlag.objects.create(dialogue=flagged, rule="refusal", reason="As an AI language model")
    dialogues[5] = flagged
    return seed_set, dialogues


def test_it_exports_approved_unflagged_dialogues_by_default(artifacts, corpus):
    export = run_export()
    assert export.status == "succeeded", export.error
    records = jsonl(artifact_bytes(export))
    assert first_texts(records) == sorted(turns_for(i)[0]["text"] for i in (0, 1, 2))
    assert export.counts["selected"] == 4  # approved, flagged included
    assert export.counts["excluded_flagged"] == 1
    assert export.counts["written"] == export.counts["train"] == 3
    assert export.counts["validation"] == 0
    assert export.total == export.progress == 3
    assert export.spec["status"] == "approved" and export.spec["include_flagged"] is False


def test_it_includes_flagged_dialogues_when_asked(artifacts, corpus):
    export = run_export(include_flagged=True)
    assert export.counts["written"] == 4 and export.counts["excluded_flagged"] == 0
    export = run_export(exclude_flagged="false")
    assert export.counts["written"] == 4


def test_it_takes_the_queue_filters(artifacts, corpus):
    seed_set, dialogues = corpus
    other = make_seed_set("kitchen")
    make_dialogue(other, turns=turns_for(9), topic="other", status="approved")
    assert run_export(seed_set=other.pk).counts["written"] == 1
    assert run_export(status="all").counts["written"] == 5 + 1  # everything unflagged, both sets
    assert run_export(status="rejected", seed_set=seed_set.pk).counts["written"] == 1
    assert run_export(status="all", flag="refusal").counts["written"] == 1  # asking for a flag includes flagged


def test_it_records_the_file_sha256_size_code_version_and_who(artifacts, corpus, reviewer):
    export = export_start(fmt="sharegpt", spec={}, created_by=reviewer, enqueue=False)
    export = export_execute(export.pk)
    data = artifact_bytes(export)
    assert export.sha256 == hashlib.sha256(data).hexdigest()
    assert export.size_bytes == len(data)
    assert export.code_version
    assert export.created_by == reviewer and export.finished_at and export.started_at
    assert export.path.startswith(f"exports/{export.pk}/") and export.path.endswith(".jsonl")
    assert (artifacts / export.path).is_file()


def test_it_writes_the_same_bytes_for_the_same_spec(artifacts, corpus):
    first, second = run_export(fmt="baize", status="all"), run_export(fmt="baize", status="all")
    assert first.path != second.path
    assert artifact_bytes(first) == artifact_bytes(second)
    assert first.sha256 == second.sha256


def test_it_shuffles_with_the_recorded_seed(artifacts, db):
    seed_set = make_seed_set()
    for i in range(40):
        make_dialogue(seed_set, turns=turns_for(i), topic=f"t{i}", status="approved")
    ordered = [r["messages"][0]["content"] for r in jsonl(artifact_bytes(run_export(shuffle=False)))]
    seed0 = [r["messages"][0]["content"] for r in jsonl(artifact_bytes(run_export()))]
    seed7 = [r["messages"][0]["content"] for r in jsonl(artifact_bytes(run_export(shuffle_seed=7)))]
    assert ordered == [turns_for(i)[0]["text"] for i in range(40)]  # id order without shuffle
    assert sorted(seed0) == sorted(seed7) == sorted(ordered)
    assert len({tuple(ordered), tuple(seed0), tuple(seed7)}) == 3
    assert seed0 == [r["messages"][0]["content"] for r in jsonl(artifact_bytes(run_export(shuffle_seed=0)))]


def test_it_gives_the_same_file_whatever_the_page_and_bucket_sizes(artifacts, db, monkeypatch):
    from collection import exporting

    seed_set = make_seed_set()
    for i in range(60):
        make_dialogue(seed_set, turns=turns_for(i), topic=f"t{i % 25}", status="approved")
    make_dialogue(seed_set, turns=turns_for(99), status="rejected")  # inside the id range, not selected
    spec = {"val_fraction": 0.3, "shuffle_seed": 11, "dedupe": False}
    big = artifact_bytes(run_export(fmt="baize", **spec))
    # Many keyset pages, few spool buckets of many small chunks (instead of one page and many buckets of one
    # chunk each) must not change a byte.
    monkeypatch.setattr(exporting, "STREAM_CHUNK", 7)
    monkeypatch.setattr(exporting, "SPOOL_BUCKET_BITS", 2)
    monkeypatch.setattr(exporting._Spool, "CHUNK", 100)
    small = run_export(fmt="baize", **spec)
    assert artifact_bytes(small) == big
    assert small.counts["written"] == 60
    with zipfile.ZipFile(io.BytesIO(big)) as zf:
        topics = [r["topic"] for split in ("train", "validation") for r in json.loads(zf.read(f"{split}.json"))]
    assert sorted(topics) == sorted(f"t{i % 25}" for i in range(60)) and topics != sorted(topics)


def test_it_replays_the_id_order_spool_in_slices_without_the_near_duplicates(artifacts, db, monkeypatch):
    from collection import exporting

    seed_set = make_seed_set()
    for i in range(30):
        make_dialogue(seed_set, turns=turns_for(i - 1 if i % 3 == 2 else i), status="approved")  # every third a copy
    whole = run_export(shuffle=False)
    assert whole.counts["collapsed_near_duplicates"] == 10 and whole.counts["written"] == 20
    monkeypatch.setattr(exporting, "STREAM_CHUNK", 4)
    monkeypatch.setattr(exporting._Spool, "CHUNK", 50)
    monkeypatch.setattr(exporting._Spool, "REPLAY_ROWS", 3)
    sliced = run_export(shuffle=False)
    assert artifact_bytes(sliced) == artifact_bytes(whole)
    kept = [formats.openai_record(turns=turns_for(i))["messages"] for i in range(30) if i % 3 != 2]
    assert [r["messages"] for r in jsonl(artifact_bytes(sliced))] == kept


@pytest.mark.django_db(transaction=True)
def test_it_reads_ahead_in_a_helper_thread_outside_a_transaction(artifacts, monkeypatch):
    # Committed rows and no atomic block around the export, as in the worker: pages come from a second connection.
    from collection import exporting

    monkeypatch.setattr(exporting, "STREAM_CHUNK", 3)
    seed_set = make_seed_set()
    for i in range(20):
        make_dialogue(seed_set, turns=turns_for(i), topic=f"t{i}", status="approved")
    export = run_export(shuffle=False)
    assert export.status == "succeeded", export.error
    assert [r["messages"][0]["content"] for r in jsonl(artifact_bytes(export))] == [
        turns_for(i)[0]["text"] for i in range(20)]
    deduped = run_export()  # the near-duplicate pass streams the same way
    assert deduped.counts["written"] == 20


def test_it_collapses_near_duplicates_unless_told_not_to(artifacts, db):
    seed_set = make_seed_set()
    kept = make_dialogue(seed_set, turns=turns_for(1), status="approved")
    copy = turns_for(1)
    copy[1]["text"] += " Indeed."  # a near-copy, not an exact one
    make_dialogue(seed_set, turns=copy, status="approved")
    make_dialogue(seed_set, turns=turns_for(2), status="approved")
    export = run_export(shuffle=False)
    records = jsonl(artifact_bytes(export))
    assert export.counts["collapsed_near_duplicates"] == 1 and export.counts["written"] == 2
    assert records[0]["messages"] == formats.openai_record(turns=kept.turns)["messages"]  # the lowest id stays
    export = run_export(dedupe=False)
    assert export.counts["collapsed_near_duplicates"] == 0 and export.counts["written"] == 3


def test_it_collapses_near_duplicates_with_the_stored_signatures_and_hashes_the_rest(artifacts, db):
    from collection.filters import dialogue_signatures

    seed_set = make_seed_set()
    first, second, third, fourth = (make_dialogue(seed_set, turns=turns_for(i), status="approved")
                                    for i in (1, 2, 3, 4))
    dialogue_signatures(Dialogue.objects.all())  # what the corpus pass stores
    # The export trusts a stored signature: given first's, second counts as its copy...
    Dialogue.objects.filter(pk=second.pk).update(minhash=Dialogue.objects.get(pk=first.pk).minhash)
    # ...and hashes a dialogue without one (new or edited) from the text it reads: fourth is now a copy of third.
    Dialogue.objects.filter(pk=fourth.pk).update(turns=third.turns, minhash=None)
    export = run_export(shuffle=False)
    assert export.counts["collapsed_near_duplicates"] == 2
    assert [r["messages"] for r in jsonl(artifact_bytes(export))] == [
        formats.openai_record(turns=d.turns)["messages"] for d in (first, third)]
    assert Dialogue.objects.get(pk=fourth.pk).minhash is None  # an export only reads


def test_it_skips_dialogues_without_turns(artifacts, db):
    seed_set = make_seed_set()
    make_dialogue(seed_set, status="approved")
    empty = Dialogue(seed_set=seed_set, topic="unparseable", status="approved", parse_error="no human marker")
    empty.set_turns([])
    empty.save()
    export = run_export()
    assert export.counts["skipped_empty"] == 1 and export.counts["written"] == 1


def make_seeded_corpus(n_seeds=30, per_seed=3):
    seed_set = make_seed_set("seeded")
    seeds = make_seeds(seed_set, [f"seed question number {i}" for i in range(n_seeds)])
    endpoint, template = make_endpoint(), make_template()
    runs = [GenerationRun.objects.create(seed_set=seed_set, endpoint=endpoint, model="m", template=template)
            for _ in range(per_seed)]
    n = 0
    for seed in seeds:
        for run in runs:
            make_dialogue(seed_set, turns=turns_for(n), topic=seed.text, seed=seed, run=run, status="approved")
            n += 1
    return seed_set


def test_it_splits_by_seed_so_no_seed_is_on_both_sides(artifacts, db):
    make_seeded_corpus()
    export = run_export(val_fraction=0.3, dedupe=False)
    assert export.status == "succeeded", export.error
    assert export.path.endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(artifact_bytes(export))) as zf:
        assert sorted(zf.namelist()) == ["train.jsonl", "validation.jsonl"]
        sides = {split: jsonl(zf.read(f"{split}.jsonl")) for split in ("train", "validation")}
    by_text = {d.turns[0]["text"]: d.seed_id for d in Dialogue.objects.all()}
    seeds = {split: {by_text[r["messages"][0]["content"]] for r in records} for split, records in sides.items()}
    assert seeds["train"] and seeds["validation"]
    assert not seeds["train"] & seeds["validation"]
    assert export.counts["train"] == len(sides["train"]) and export.counts["validation"] == len(sides["validation"])
    assert export.counts["written"] == 90
    assert 0.1 < export.counts["validation"] / 90 < 0.5


def test_it_splits_dialogues_without_a_seed_by_topic(artifacts, db):
    seed_set = make_seed_set()
    for i in range(60):
        make_dialogue(seed_set, turns=turns_for(i), topic=f"topic {i % 20}", status="approved")
    export = run_export(val_fraction=0.5, dedupe=False)
    with zipfile.ZipFile(io.BytesIO(artifact_bytes(export))) as zf:
        topics = {s: {d.topic for d in Dialogue.objects.filter(
            turns__0__text__in=[r["messages"][0]["content"] for r in jsonl(zf.read(f"{s}.jsonl"))])}
            for s in ("train", "validation")}
    assert topics["train"] and topics["validation"] and not topics["train"] & topics["validation"]


def test_it_writes_a_hugging_face_dataset_and_parquet(artifacts, db, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    make_seeded_corpus(n_seeds=10, per_seed=2)
    export = run_export(fmt="hf", val_fraction=0.4, dedupe=False, shuffle=False)
    assert export.status == "succeeded", export.error
    assert export.path.endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(artifact_bytes(export))) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "hf")
    assert "parquet/train.parquet" in names and "parquet/validation.parquet" in names
    assert "dataset/dataset_dict.json" in names
    loaded = datasets.load_from_disk(str(tmp_path / "hf" / "dataset"))
    assert set(loaded) == {"train", "validation"}
    assert len(loaded["train"]) == export.counts["train"] and len(loaded["validation"]) == export.counts["validation"]
    row = loaded["train"][0]
    assert set(row) == {"id", "topic", "messages", "seed_set", "source", "split"}
    dialogue = Dialogue.objects.get(pk=row["id"])
    assert row["messages"] == formats.hf_messages(dialogue.turns)
    assert row["seed_set"] == "seeded" and row["source"] == "generated" and row["split"] == "train"
    table = pq.read_table(tmp_path / "hf" / "parquet" / "validation.parquet")
    assert table.num_rows == export.counts["validation"]
    assert set(table.column("split").to_pylist()) == {"validation"}
    again = run_export(fmt="hf", val_fraction=0.4, dedupe=False, shuffle=False)
    assert again.sha256 == export.sha256


def test_it_writes_the_state_that_save_to_disk_writes(artifacts, db, tmp_path):
    # The dataset folder is written in place, not through save_to_disk: check it against save_to_disk itself.
    import datasets

    make_seeded_corpus(n_seeds=3, per_seed=2)
    export = run_export(fmt="hf", dedupe=False)
    with zipfile.ZipFile(io.BytesIO(artifact_bytes(export))) as zf:
        zf.extractall(tmp_path / "ours")
    ours = datasets.load_from_disk(str(tmp_path / "ours" / "dataset"))
    ours.save_to_disk(str(tmp_path / "theirs"))
    assert json.loads((tmp_path / "ours" / "dataset" / "dataset_dict.json").read_text()) == json.loads(
        (tmp_path / "theirs" / "dataset_dict.json").read_text())
    state, their_state = (json.loads((folder / "train" / "state.json").read_text())
                          for folder in (tmp_path / "ours" / "dataset", tmp_path / "theirs"))
    assert set(state) == set(their_state)  # same keys; the fingerprint is ours (from the content)
    assert {k: v for k, v in state.items() if k != "_fingerprint"} == {
        k: v for k, v in their_state.items() if k != "_fingerprint"}
    theirs = datasets.load_from_disk(str(tmp_path / "theirs"))
    assert theirs["train"].features == ours["train"].features
    assert theirs["train"].to_list() == ours["train"].to_list()


def test_it_records_a_failure_on_the_row(artifacts, corpus):
    export = export_start(fmt="openai", spec={}, enqueue=False)
    Export.objects.filter(pk=export.pk).update(spec={**export.spec, "seed_set": "not-a-number"})
    export = export_execute(export.pk)
    assert export.status == "failed"
    assert "seed_set" in export.error and not export.path


def test_it_runs_a_claimed_export_only_once(artifacts, corpus):
    export = run_export()
    finished_at = export.finished_at
    assert export_execute(export.pk).finished_at == finished_at


@pytest.mark.parametrize("fmt, spec, words", [
    ("csv", {}, "format"),
    ("openai", {"val_fraction": "1.5"}, "val_fraction"),
    ("openai", {"val_fraction": "1"}, "val_fraction"),
    ("openai", {"shuffle_seed": "-1"}, "shuffle_seed"),
    ("openai", {"dedupe": "maybe"}, "dedupe"),
    ("openai", {"status": "lost"}, "status"),
    ("openai", {"min_turns": "x"}, "min_turns"),
])
def test_it_refuses_a_bad_spec_naming_the_field(db, fmt, spec, words):
    with pytest.raises(ExportError, match=words):
        export_start(fmt=fmt, spec=spec)
    assert not Export.objects.exists()


def test_it_fills_in_every_option_in_the_recorded_spec(db):
    spec = export_spec_clean({"seed_set": "3", "include_flagged": "on", "val_fraction": "0.1"})
    assert spec == {"seed_set": 3, "status": "approved", "include_flagged": True, "dedupe": True,
                    "dedupe_threshold": 0.85, "val_fraction": 0.1, "shuffle": True,
                    "shuffle_seed": 0}


def test_it_runs_the_export_task_after_commit(artifacts, corpus, eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        export = export_start(fmt="baize", spec={})
        assert Export.objects.get(pk=export.pk).status == "queued"
    assert len(callbacks) == 1
    export.refresh_from_db()
    assert export.status == "succeeded" and export.counts["written"] == 3
    records = json.loads(artifact_bytes(export))
    assert all(r["input"].startswith(formats.BAIZE_PREAMBLE) for r in records)


# --- the command ---------------------------------------------------------------------------------------------

def test_it_exports_from_the_command_line(artifacts, corpus, tmp_path):
    out = io.StringIO()
    call_command("export_corpus", str(tmp_path / "corpus.jsonl"), "--format", "openai", stdout=out)
    export = Export.objects.get()
    data = (tmp_path / "corpus.jsonl").read_bytes()
    assert data == artifact_bytes(export)
    assert len(jsonl(data)) == 3
    printed = out.getvalue()
    assert export.sha256 in printed and "written" in printed and f"export {export.pk}" in printed


def test_it_writes_train_and_validation_files_from_the_command_line(artifacts, db, tmp_path):
    seed_set = make_seeded_corpus()
    out = io.StringIO()
    call_command("export_corpus", str(tmp_path / "corpus.json"), "--format", "baize", "--set", seed_set.name,
                 "--val-fraction", "0.3", "--shuffle-seed", "5", "--no-dedupe", stdout=out)
    train = json.loads((tmp_path / "corpus.train.json").read_text(encoding="utf-8"))
    validation = json.loads((tmp_path / "corpus.validation.json").read_text(encoding="utf-8"))
    export = Export.objects.get()
    assert len(train) == export.counts["train"] and len(validation) == export.counts["validation"]
    assert export.spec["shuffle_seed"] == 5 and export.spec["dedupe"] is False
    assert "corpus.validation.json" in out.getvalue()


def test_it_writes_a_hugging_face_folder_from_the_command_line(artifacts, corpus, tmp_path):
    import datasets

    call_command("export_corpus", str(tmp_path / "hf"), "--format", "hf", "--status", "all", stdout=io.StringIO())
    assert len(datasets.load_from_disk(str(tmp_path / "hf" / "dataset"))["train"]) == 5
    assert (tmp_path / "hf" / "parquet" / "train.parquet").is_file()


def test_it_exports_one_run_and_includes_flagged_from_the_command_line(artifacts, db, tmp_path):
    seed_set = make_seeded_corpus(n_seeds=4, per_seed=2)
    run = GenerationRun.objects.order_by("id").first()
    Dialogue.objects.filter(run=run).update(is_flagged=True)
    call_command("export_corpus", str(tmp_path / "a.jsonl"), "--format", "sharegpt", "--run", str(run.pk),
                 stdout=io.StringIO())
    assert Export.objects.get().counts["written"] == 0
    call_command("export_corpus", str(tmp_path / "b.jsonl"), "--format", "sharegpt", "--run", str(run.pk),
                 "--include-flagged", stdout=io.StringIO())
    assert len(jsonl((tmp_path / "b.jsonl").read_bytes())) == 4
    assert seed_set


@pytest.mark.parametrize("args, words", [
    (["--format", "csv"], "invalid choice"),
    (["--format", "openai", "--set", "nope"], "no seed set named 'nope'"),
    (["--format", "openai", "--val-fraction", "2"], "val_fraction"),
])
def test_it_refuses_bad_command_options(db, tmp_path, args, words):
    with pytest.raises(CommandError, match=words):
        call_command("export_corpus", str(tmp_path / "x.jsonl"), *args, stdout=io.StringIO())
    assert not (tmp_path / "x.jsonl").exists()


# --- jobs whose worker died ------------------------------------------------------------------------------------

def test_it_fails_exports_and_corpus_imports_whose_worker_went_silent(db, settings):
    from datetime import timedelta

    from django.utils import timezone

    from collection.exporting import stale_jobs_fail
    from collection.models import Import
    from collection.tasks import fail_stale_exports

    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 5)
    stale = Export.objects.create(format="openai", spec={}, status="running", heartbeat_at=old)
    alive = Export.objects.create(format="openai", spec={}, status="running", heartbeat_at=timezone.now())
    queued = Export.objects.create(format="openai", spec={}, status="queued")
    corpus = Import.objects.create(kind="corpus", filename="c.jsonl", status="running", heartbeat_at=old)
    seeds = Import.objects.create(kind="seeds", filename="s.txt", status="running", heartbeat_at=old)
    assert stale_jobs_fail() == 2
    assert fail_stale_exports() == 0  # the periodic task: nothing left to do
    for job, status in ((stale, "failed"), (alive, "running"), (queued, "queued"), (corpus, "failed"),
                        (seeds, "running")):
        job.refresh_from_db()
        assert job.status == status
    assert "no heartbeat" in stale.error and stale.finished_at


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_heartbeat_going_while_an_export_is_busy(settings):
    import time as clock

    from collection.exporting import keep_alive

    settings.JOB_HEARTBEAT_SECONDS = 0.05
    export = Export.objects.create(format="openai", spec={}, status="running", heartbeat_at=None)
    with keep_alive(export):
        clock.sleep(0.5)  # busy with something that writes no progress
        export.refresh_from_db()
        assert export.heartbeat_at is not None
