"""Corpus formats: exact layouts, byte-stable writing, and parse(render(x)) == x for every text format."""
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collection import formats
from collection.formats import FormatError

TURNS = [
    {"role": "human", "text": "How do I keep basil alive indoors?"},
    {"role": "ai", "text": "Sun, water when dry.\n\nAnd pinch the flowers: « ça pousse » 🌿"},
    {"role": "human", "text": "  Leading and trailing spaces stay  "},
    {"role": "ai", "text": 'Quotes " and backslashes \\ and a [|Human|] marker mid-sentence.'},
]
DEMO = Path(__file__).resolve().parent.parent / "collection" / "demo" / "dialogues.baize.json"


def test_it_writes_the_published_baize_layout():
    record = formats.baize_record(topic="Basil", turns=TURNS[:2])
    assert list(record) == ["topic", "input"]
    assert record["input"] == (
        "The conversation between human and AI assistant.\n"
        "[|Human|] How do I keep basil alive indoors?\n"
        "[|AI|] Sun, water when dry.\n\nAnd pinch the flowers: « ça pousse » 🌿\n"
        "[|Human|] "
    )


def test_it_writes_openai_and_sharegpt_records():
    assert formats.openai_record(turns=TURNS[:2]) == {"messages": [
        {"role": "user", "content": TURNS[0]["text"]}, {"role": "assistant", "content": TURNS[1]["text"]}]}
    assert formats.sharegpt_record(turns=TURNS[:2]) == {"conversations": [
        {"from": "human", "value": TURNS[0]["text"]}, {"from": "gpt", "value": TURNS[1]["text"]}]}


@pytest.mark.parametrize("fmt", formats.TEXT_FORMATS)
def test_it_round_trips_tricky_text(fmt):
    record = json.loads(formats.dumps(formats.render_record(fmt, topic="Basil", turns=TURNS)))
    parsed = formats.parse_record(fmt, record)
    assert parsed.turns == TURNS
    assert parsed.topic == ("Basil" if fmt == formats.BAIZE else TURNS[0]["text"])


@pytest.mark.parametrize("fmt", formats.TEXT_FORMATS)
def test_it_round_trips_empty_turn_text_and_a_last_human_turn(fmt):
    turns = [{"role": "human", "text": ""}, {"role": "ai", "text": "\n"}, {"role": "human", "text": "last?"}]
    record = json.loads(formats.dumps(formats.render_record(fmt, topic="t", turns=turns)))
    assert formats.parse_record(fmt, record).turns == turns


turn_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    # The one thing Baize's layout cannot carry (see the module docstring): a marker at the start of a line.
    lambda t: "[|Human|]" not in t and "[|AI|]" not in t
)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(turn_text, min_size=1, max_size=7), fmt=st.sampled_from(formats.TEXT_FORMATS))
def test_it_parses_back_whatever_it_renders(texts, fmt):
    turns = [{"role": "human" if i % 2 == 0 else "ai", "text": t} for i, t in enumerate(texts)]
    buffer = io.BytesIO()
    writer = formats.CorpusWriter(fmt, buffer)
    writer.write(topic="topic", turns=turns)
    writer.close()
    data = buffer.getvalue().decode("utf-8")
    record = json.loads(data)[0] if fmt == formats.BAIZE else json.loads(data)
    assert formats.parse_record(fmt, record).turns == turns


def test_it_streams_a_baize_list_that_is_valid_json():
    buffer = io.BytesIO()
    writer = formats.CorpusWriter(formats.BAIZE, buffer)
    writer.write(topic="a", turns=TURNS[:2])
    writer.write(topic="b", turns=TURNS[2:])
    writer.close()
    data = buffer.getvalue()
    assert data.startswith(b"[\n{") and data.endswith(b"}\n]\n")
    assert data.count(b"\n") == 4  # "[", record, record, "]": one record a line
    assert [r["topic"] for r in json.loads(data)] == ["a", "b"]
    assert "🌿".encode("utf-8") in data  # UTF-8 kept, not \\u-escaped


def test_it_writes_an_empty_baize_list():
    buffer = io.BytesIO()
    formats.CorpusWriter(formats.BAIZE, buffer).close()
    assert json.loads(buffer.getvalue()) == []


def test_it_writes_one_jsonl_line_per_dialogue_with_lf_line_ends():
    buffer = io.BytesIO()
    writer = formats.CorpusWriter(formats.OPENAI, buffer)
    writer.write(topic="a", turns=[{"role": "human", "text": "line\r\nbreak"}])
    writer.write(topic="b", turns=TURNS)
    writer.close()
    lines = buffer.getvalue().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert b"\r" not in buffer.getvalue()  # a CR inside a text is escaped by JSON, never a raw line end


def test_it_writes_the_same_bytes_every_time():
    def render():
        buffer = io.BytesIO()
        writer = formats.CorpusWriter(formats.SHAREGPT, buffer)
        for i in range(5):
            writer.write(topic=str(i), turns=TURNS)
        writer.close()
        return buffer.getvalue()

    assert render() == render()


def test_it_reads_the_published_baize_data():
    records = json.loads(DEMO.read_text(encoding="utf-8"))
    assert records
    for record in records:
        parsed = formats.parse_baize(record)
        assert parsed.turns[0]["role"] == "human" and len(parsed.turns) >= 2
        assert formats.baize_input(parsed.turns) == record["input"]


def test_it_drops_text_before_the_first_human_marker_and_the_trailing_prompt():
    parsed = formats.parse_baize({"topic": "t", "input": "Some preamble.\n[|Human|] Hi\n[|AI|] Hello!\n[|Human|] "})
    assert parsed.turns == [{"role": "human", "text": "Hi"}, {"role": "ai", "text": "Hello!"}]


def test_it_splits_baize_input_only_at_line_starts():
    parsed = formats.parse_baize({"topic": "t", "input": "[|Human|] say [|AI|] please\n[|AI|] ok\n[|Human|] "})
    assert parsed.turns == [{"role": "human", "text": "say [|AI|] please"}, {"role": "ai", "text": "ok"}]


def test_it_keeps_a_leading_system_message_beside_the_turns():
    parsed = formats.parse_openai({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}]})
    assert parsed.turns == [{"role": "human", "text": "Hi"}, {"role": "ai", "text": "Hello"}]
    assert parsed.extra == {"system": "Be brief."}
    assert parsed.topic == "Hi"


def test_it_accepts_common_sharegpt_speaker_names_and_keeps_the_id():
    parsed = formats.parse_sharegpt({"id": "abc", "conversations": [
        {"from": "user", "value": "Hi"}, {"from": "chatgpt", "value": "Hello"}]})
    assert parsed.turns == [{"role": "human", "text": "Hi"}, {"role": "ai", "text": "Hello"}]
    assert parsed.extra == {"id": "abc"}


@pytest.mark.parametrize("fmt, record, field, words", [
    (formats.BAIZE, [], "record", "JSON object"),
    (formats.BAIZE, {"input": "[|Human|] hi\n"}, "topic", "missing"),
    (formats.BAIZE, {"topic": 3, "input": "[|Human|] hi\n"}, "topic", "string"),
    (formats.BAIZE, {"topic": "t"}, "input", "missing"),
    (formats.BAIZE, {"topic": "t", "input": "no markers at all"}, "input", "no line starting with [|Human|]"),
    (formats.BAIZE, {"topic": "t", "input": "[|AI|] I start\n"}, "input", "turn 0"),
    (formats.BAIZE, {"topic": "t", "input": "[|Human|] a\n[|Human|] b\n[|AI|] c\n"}, "input", "turn 1"),
    (formats.BAIZE, {"topic": "t", "input": formats.BAIZE_PREAMBLE + "[|Human|] "}, "input", "no turns"),
    (formats.OPENAI, {"conversations": []}, "messages", "missing"),
    (formats.OPENAI, {"messages": "hi"}, "messages", "list"),
    (formats.OPENAI, {"messages": []}, "messages", "no turns"),
    (formats.OPENAI, {"messages": ["hi"]}, "messages[0]", "object"),
    (formats.OPENAI, {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
     "messages[1].role", "'tool'"),
    (formats.OPENAI, {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     "messages[1].role", "only first"),
    (formats.OPENAI, {"messages": [{"role": "user", "content": ["parts"]}]}, "messages[0].content", "string"),
    (formats.OPENAI, {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
     "messages[1].role", "expected a human turn"),
    (formats.SHAREGPT, {"conversations": [{"from": "human"}]}, "conversations[0].value", "missing"),
    (formats.SHAREGPT, {"conversations": [{"from": ["x"], "value": "v"}]}, "conversations[0].from", "not one of"),
    (formats.SHAREGPT, {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
     "conversations[1].from", "expected a ai turn"),
])
def test_it_names_the_field_of_a_bad_record(fmt, record, field, words):
    with pytest.raises(FormatError) as caught:
        formats.parse_record(fmt, record)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_it_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="format"):
        formats.parse_record("csv", {})
    with pytest.raises(ValueError, match="format"):
        formats.CorpusWriter("hf", io.BytesIO())


def test_it_describes_the_hugging_face_columns():
    schema = formats.hf_schema()
    assert schema.names == ["id", "topic", "messages", "seed_set", "source", "split"]
    assert formats.hf_messages(TURNS[:2])[1] == {"role": "assistant", "content": TURNS[1]["text"]}


def test_it_describes_the_hugging_face_features_as_datasets_does(tmp_path):
    import datasets

    info = datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(formats.hf_schema()))
    info.write_to_directory(str(tmp_path))
    assert json.loads((tmp_path / "dataset_info.json").read_text()) == formats.hf_dataset_info()
