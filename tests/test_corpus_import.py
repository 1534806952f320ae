"""Corpus import: Baize JSON, OpenAI JSONL and ShareGPT JSONL into a seed set + dialogues; round trip through the
export; bad input named by file, record and field with nothing imported; the command and the queued task."""
import io
import json
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from collection import formats
from collection.corpus_import import CorpusImportError, corpus_import, corpus_import_start
from collection.exporting import export_execute, export_start
from collection.models import Dialogue, DialogueFlag, Import, Seed, SeedSet
from tests.factories import make_dialogue, make_seed_set

CORPORA = Path(__file__).resolve().parent / "data" / "corpora"
SAMPLES = {"baize": CORPORA / "baize.json", "openai": CORPORA / "openai.jsonl", "sharegpt": CORPORA / "sharegpt.jsonl"}


def read_records(fmt, data):
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if fmt == "baize":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def turns_of(fmt, records):
    return [formats.parse_record(fmt, r).turns for r in records]


def nothing_imported():
    return not Dialogue.objects.exists() and not Seed.objects.exists() and not SeedSet.objects.exists()


@pytest.mark.parametrize("fmt", ["baize", "openai", "sharegpt"])
def test_it_imports_a_corpus_into_a_seed_set_with_dialogues(db, fmt):
    job = corpus_import(path=SAMPLES[fmt], fmt=fmt, seed_set_name=f"imported-{fmt}")
    assert job.status == "succeeded", job.error
    assert job.kind == "corpus" and job.rows_read == job.imported == 3 and job.bad == 0
    seed_set = SeedSet.objects.get(name=f"imported-{fmt}")
    assert job.seed_set == seed_set
    dialogues = list(seed_set.dialogues.order_by("id"))
    expected = turns_of(fmt, read_records(fmt, SAMPLES[fmt].read_bytes()))
    assert [d.turns for d in dialogues] == expected
    for d in dialogues:
        assert d.original_turns == d.turns
        assert d.status == "undecided" and d.run is None
        assert d.source == f"import:{fmt}:{SAMPLES[fmt].name}"
        assert d.num_turns == len(d.turns) and d.length_chars == sum(len(t["text"]) for t in d.turns)
        assert d.seed.text == " ".join(d.topic.split())
        assert d.generation["imported"]["format"] == fmt
    assert dialogues[0].generation["imported"]["record"] == (
        "baize.json:record 1" if fmt == "baize" else f"{SAMPLES[fmt].name}:line 1")
    assert Seed.objects.filter(seed_set=seed_set).count() == 3


def test_it_uses_the_baize_topic_and_the_first_human_message_as_seeds(db):
    corpus_import(path=SAMPLES["baize"], fmt="baize", seed_set_name="b")
    corpus_import(path=SAMPLES["openai"], fmt="openai", seed_set_name="o")
    assert set(Seed.objects.filter(seed_set__name="b").values_list("text", flat=True)) == {
        "How do I repot a snake plant?", "Qu'est-ce qu'un roux ?", "Explain Python list comprehensions"}
    assert "When should I prune tomatoes?" in set(Seed.objects.filter(seed_set__name="o").values_list("text", flat=True))
    assert Seed.objects.filter(seed_set__name="b").first().source_ref == "baize.json:record 1"


def test_it_keeps_the_raw_record_the_system_prompt_and_the_id(db):
    corpus_import(path=SAMPLES["openai"], fmt="openai", seed_set_name="o")
    corpus_import(path=SAMPLES["sharegpt"], fmt="sharegpt", seed_set_name="s")
    corpus_import(path=SAMPLES["baize"], fmt="baize", seed_set_name="b")
    first = Dialogue.objects.filter(seed_set__name="o").order_by("id").first()
    assert first.generation["imported"]["system"] == "You are a concise gardening assistant."
    assert json.loads(first.raw_output)["messages"][0]["role"] == "system"
    assert Dialogue.objects.filter(seed_set__name="s").order_by("id").first().generation["imported"]["id"] == "sg-1"
    baize = Dialogue.objects.filter(seed_set__name="b").order_by("id").first()
    assert baize.raw_output == json.loads(SAMPLES["baize"].read_text(encoding="utf-8"))[0]["input"]


def test_it_runs_the_per_dialogue_filters(db):
    corpus_import(path=SAMPLES["sharegpt"], fmt="sharegpt", seed_set_name="s")
    refused = Dialogue.objects.get(topic="Tell me a joke.")
    assert refused.is_flagged
    assert list(refused.flags.values_list("rule", flat=True)) == ["refusal"]
    assert not Dialogue.objects.get(topic="What is a mutex?").is_flagged


def test_it_judges_the_language_only_when_told(db, tmp_path):
    path = tmp_path / "fr.jsonl"
    path.write_text(json.dumps({"messages": [
        {"role": "user", "content": "Comment faire une pâte brisée ?"},
        {"role": "assistant", "content": "Mélangez la farine, le beurre froid coupé en dés et une pincée de sel, "
                                         "puis ajoutez un peu d'eau froide jusqu'à obtenir une boule homogène."}]},
        ensure_ascii=False) + "\n", encoding="utf-8")
    corpus_import(path=path, fmt="openai", seed_set_name="unknown-language")
    assert not DialogueFlag.objects.filter(rule="wrong_language").exists()
    corpus_import(path=path, fmt="openai", seed_set_name="english", language="en")
    assert DialogueFlag.objects.filter(rule="wrong_language", dialogue__seed_set__name="english").exists()


def test_it_adds_to_an_existing_seed_set_and_counts_repeated_topics(db, tmp_path):
    seed_set = make_seed_set("mixed")
    make_dialogue(seed_set)
    corpus_import(path=SAMPLES["openai"], fmt="openai", seed_set_name="mixed")
    job = corpus_import(path=SAMPLES["openai"], fmt="openai", seed_set_name="mixed")
    assert job.status == "succeeded" and job.imported == 3 and job.duplicates == 3
    assert seed_set.dialogues.count() == 1 + 3 + 3
    assert Seed.objects.filter(seed_set=seed_set).count() == 3


def test_it_reads_long_conversations(db, tmp_path):
    long_text = "word " * 40_000  # a 200 KB answer: far above a seed file's line cap
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "Write a lot."},
                                                  {"from": "gpt", "value": long_text}]}) + "\n")
    job = corpus_import(path=path, fmt="sharegpt", seed_set_name="long")
    assert job.status == "succeeded", job.error
    assert Dialogue.objects.get().turns[1]["text"] == long_text


@pytest.mark.parametrize("fmt", ["baize", "openai", "sharegpt"])
def test_it_round_trips_import_then_export_in_the_same_format(db, artifacts, fmt):
    corpus_import(path=SAMPLES[fmt], fmt=fmt, seed_set_name="rt")
    export = export_execute(export_start(fmt=fmt, spec={"status": "all", "dedupe": False, "include_flagged": True,
                                                        "shuffle": False}, enqueue=False).pk)
    assert export.status == "succeeded", export.error
    with default_storage.open(export.path, "rb") as handle:
        exported = handle.read()
    original = read_records(fmt, SAMPLES[fmt].read_bytes())
    again = read_records(fmt, exported)
    assert turns_of(fmt, again) == turns_of(fmt, original)  # same dialogues, turn by turn, text unchanged
    if fmt == "baize":
        assert again == original  # topic and input too: the published layout, string for string


@pytest.mark.parametrize("fmt", ["baize", "openai", "sharegpt"])
def test_it_reexports_its_own_export_byte_for_byte(db, artifacts, tmp_path, fmt):
    seed_set = make_seed_set("origin")
    for i in range(5):
        make_dialogue(seed_set, turns=[{"role": "human", "text": f"q{i} ✓ \"x\""}, {"role": "ai", "text": f"a{i}\n"},
                                       {"role": "human", "text": f"  more {i}?"}], topic=f"topic {i}", status="approved")

    def export_bytes(seed_set_id):
        export = export_execute(export_start(fmt=fmt, spec={"seed_set": seed_set_id, "status": "all",
                                                            "dedupe": False, "shuffle": False}, enqueue=False).pk)
        with default_storage.open(export.path, "rb") as handle:
            return handle.read()

    first = export_bytes(seed_set.pk)
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(first)
    corpus_import(path=path, fmt=fmt, seed_set_name="back")
    back = SeedSet.objects.get(name="back")
    assert [d.turns for d in back.dialogues.order_by("id")] == [d.turns for d in seed_set.dialogues.order_by("id")]
    assert export_bytes(back.pk) == first


BAD = [
    ("baize", b"", "bad.json: the file is empty"),
    ("baize", b'{"topic": "t", "input": "[|Human|] hi\\n"}', "bad.json: expected a JSON list"),
    ("baize", b'[{"topic": "a", "input": "[|Human|] hi\\n[|AI|] yo\\n"}, {"topic": "b", "inp',
     "bad.json:record 2: not valid JSON (parse error: premature EOF: the file is cut off"),
    ("baize", b'[{"topic": "a", "input": "[|Human|] hi\\n[|AI|] yo\\n"}, {"topic": "b\xff", "input": ""}]',
     "bad.json:record 2: not valid JSON (lexical error: invalid bytes in UTF8 string"),
    ("baize", b'[{"topic": "a", "input": "[|Human|] hi\\n[|AI|] yo\\n"}, {"input": "[|Human|] x\\n"}]',
     "bad.json:record 2: topic: missing"),
    ("baize", b'[{"topic": "a", "input": "[|Human|] hi\\n[|AI|] yo\\n"}, {"topic": "b", "input": "[|AI|] x\\n"}]',
     "bad.json:record 2: input: turn 0: expected a human turn"),
    ("baize", b'[{"topic": "  ", "input": "[|Human|] hi\\n[|AI|] yo\\n"}]',
     "bad.json:record 1: topic: empty, but it is the seed"),
    ("baize", b'[]', "bad.json: no records found"),
    ("openai", b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
               b'{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}\n',
     "bad.json:line 2: messages[1].role: 'bot' is not one of"),
    ("openai", b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{"mess',
     "bad.json:line 2"),
    ("openai", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n', "bad.json:line 1"),
    ("openai", b'"just a string"\n', "bad.json:line 1: record: must be a JSON object"),
    ("openai", b'{"messages": [{"role": "user", "content": "nul \\u0000 here"}]}\n', "bad.json:line 1: contains a NUL"),
    ("sharegpt", b'{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]}\n',
     "bad.json:line 1: conversations[1].value: missing"),
    ("sharegpt", b'{"messages": []}\n', "bad.json:line 1: conversations: missing"),
    ("sharegpt", b"", "bad.json"),
]


@pytest.mark.parametrize("fmt, content, words", BAD)
def test_it_names_file_record_and_field_of_bad_input_and_imports_nothing(db, tmp_path, fmt, content, words):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    job = corpus_import(path=path, fmt=fmt, seed_set_name="never")
    assert job.status == "failed"
    assert words in job.error
    assert nothing_imported()
    assert job.imported == 0 and job.report[0]["error"] == job.error


def test_it_leaves_an_existing_seed_set_untouched_when_a_later_record_is_bad(db, tmp_path):
    seed_set = make_seed_set("keep")
    good = SAMPLES["openai"].read_bytes()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good * 400 + b'{"messages": [{"role": "user"}]}\n')  # 1200 good records, then a bad one
    job = corpus_import(path=path, fmt="openai", seed_set_name="keep")
    assert job.status == "failed" and "bad.jsonl:line 1201: messages[0].content: missing" in job.error
    assert not seed_set.dialogues.exists() and not Seed.objects.exists()


@pytest.mark.parametrize("kwargs, words", [
    ({"fmt": "csv"}, "format"), ({"seed_set_name": " "}, "seed set"), ({"language": "english-please"}, "language"),
])
def test_it_refuses_a_bad_request(db, kwargs, words):
    arguments = {"path": SAMPLES["openai"], "fmt": "openai", "seed_set_name": "x", **kwargs}
    with pytest.raises(CorpusImportError, match=words):
        corpus_import_start(**arguments)
    assert not Import.objects.exists()


def test_it_imports_an_upload_through_the_task_and_then_flags_near_duplicates(
        db, artifacts, eager, django_capture_on_commit_callbacks, tmp_path):
    record = {"messages": [{"role": "user", "content": "How do I brew green tea properly at home?"},
                           {"role": "assistant", "content": "Use water at about 75 degrees, steep the leaves for two "
                                                            "minutes, and never let the water boil over the leaves."}]}
    lines = [record, record, {"messages": [{"role": "user", "content": "Another topic entirely?"},
                                           {"role": "assistant", "content": "Yes, something quite different here."}]}]
    name = default_storage.save("imports/tea.jsonl", ContentFile(
        "".join(json.dumps(r) + "\n" for r in lines).encode("utf-8")))
    with django_capture_on_commit_callbacks(execute=True):
        job = corpus_import_start(path=name, fmt="openai", seed_set_name="tea", filename="tea.jsonl")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.imported == 3
    dialogues = list(Dialogue.objects.order_by("id"))
    assert [d.is_flagged for d in dialogues] == [False, True, False]
    assert dialogues[1].flags.get().rule == "near_duplicate"


# --- the command ---------------------------------------------------------------------------------------------

def test_it_imports_from_the_command_line(db):
    out = io.StringIO()
    call_command("import_corpus", str(SAMPLES["sharegpt"]), "--format", "sharegpt", "--set", "cli", stdout=out)
    assert "3 dialogues from 3 records into seed set 'cli'" in out.getvalue()
    assert "flagged by the automatic filters: 1" in out.getvalue()
    assert Dialogue.objects.filter(seed_set__name="cli").count() == 3


def test_it_fails_on_the_command_line_naming_the_record(db, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"conversations": [{"from": "gpt", "value": "I start"}]}\n')
    with pytest.raises(CommandError, match=r"broken.jsonl:line 1: conversations\[0\].from: expected a human turn"):
        call_command("import_corpus", str(path), "--format", "sharegpt", "--set", "cli", stdout=io.StringIO())
    assert nothing_imported()


@pytest.mark.parametrize("args, words", [
    (["--format", "csv", "--set", "x"], "invalid choice"),
    (["--format", "openai"], "--set"),
])
def test_it_refuses_bad_command_options(db, args, words):
    with pytest.raises(CommandError, match=words):
        call_command("import_corpus", str(SAMPLES["openai"]), *args, stdout=io.StringIO())


def test_it_says_when_the_file_is_missing(db, tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_corpus", str(tmp_path / "nope.json"), "--format", "baize", "--set", "x")
