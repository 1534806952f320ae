"""Corpus file formats: how one dialogue looks in each file we write (export) and read (corpus import).

- Baize JSON: the published Baize data layout, a JSON list of {"topic", "input"} where input is
  "The conversation between human and AI assistant.\\n[|Human|] …\\n[|AI|] …\\n[|Human|] " (the trailing empty
  human prompt is part of the layout: Baize fine-tunes on the whole string).
- OpenAI chat JSONL: one {"messages": [{"role": "user"|"assistant", "content"}]} per line.
- ShareGPT JSONL: one {"conversations": [{"from": "human"|"gpt", "value"}]} per line.
- Hugging Face rows (for the dataset export): id, topic, messages (role/content), seed_set, source, split.

Rendering and parsing are exact inverses for our own output: import then export in the same format gives the
same turns, text unchanged. The one thing Baize's layout cannot carry is a turn whose text itself contains a
line starting with "[|Human|] " or "[|AI|] "; such a turn is written verbatim (that is what a model trained on the
file sees) but would split when read back.

No Django here: plain functions over dicts and strings, reused by collection.exporting and collection.corpus_import.
"""
import re
from dataclasses import dataclass, field

import orjson

from collection.turns import AI, HUMAN, TurnsError, validate_turns

BAIZE = "baize"
OPENAI = "openai"
SHAREGPT = "sharegpt"
HF = "hf"
FORMATS = (BAIZE, OPENAI, SHAREGPT, HF)
# Formats a single text file carries (and corpus import reads).
TEXT_FORMATS = (BAIZE, OPENAI, SHAREGPT)
EXTENSIONS = {BAIZE: ".json", OPENAI: ".jsonl", SHAREGPT: ".jsonl"}

BAIZE_PREAMBLE = "The conversation between human and AI assistant.\n"
BAIZE_HUMAN = "[|Human|]"
BAIZE_AI = "[|AI|]"
BAIZE_MARKER = {HUMAN: BAIZE_HUMAN, AI: BAIZE_AI}
# A marker counts only at the start of a line and is followed by exactly one space, which belongs to the marker.
_BAIZE_SPLIT = re.compile(r"^(\[\|Human\|\]|\[\|AI\|\]) ?", re.MULTILINE)
_BAIZE_ROLE = {BAIZE_HUMAN: HUMAN, BAIZE_AI: AI}

OPENAI_ROLE = {HUMAN: "user", AI: "assistant"}
_OPENAI_READ = {"user": HUMAN, "assistant": AI}
SHAREGPT_FROM = {HUMAN: "human", AI: "gpt"}
# ShareGPT dumps in the wild use a few speaker names; these are the ones that unambiguously mean one side.
_SHAREGPT_READ = {"human": HUMAN, "user": HUMAN, "gpt": AI, "chatgpt": AI, "assistant": AI, "model": AI}
_SYSTEM = "system"


class FormatError(ValueError):
    """A record that does not fit its format; `field` names where (e.g. "messages[2].role")."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ParsedRecord:
    topic: str
    turns: list
    # What the record carried beyond the turns (a leading system prompt, an id), kept with the dialogue.
    extra: dict = field(default_factory=dict)


# --- writing ------------------------------------------------------------------------------------------------

def dumps_bytes(record):
    """One record as one line of UTF-8 JSON: compact, non-ASCII text kept as is (not \\u-escaped), keys in the
    order the record was built, so the bytes depend only on the record. orjson: about 3x faster than json.dumps,
    which matters at a million dialogues."""
    return orjson.dumps(record)


def dumps(record):
    return dumps_bytes(record).decode("utf-8")


def baize_input(turns):
    parts = [BAIZE_PREAMBLE]
    for turn in turns:
        parts.append(f"{BAIZE_MARKER[turn['role']]} {turn['text']}\n")
    parts.append(BAIZE_HUMAN + " ")
    return "".join(parts)


def baize_record(*, topic, turns):
    return {"topic": topic, "input": baize_input(turns)}


def openai_record(*, turns):
    return {"messages": [{"role": OPENAI_ROLE[t["role"]], "content": t["text"]} for t in turns]}


def sharegpt_record(*, turns):
    return {"conversations": [{"from": SHAREGPT_FROM[t["role"]], "value": t["text"]} for t in turns]}


def render_record(fmt, *, topic, turns):
    if fmt == BAIZE:
        return baize_record(topic=topic, turns=turns)
    if fmt == OPENAI:
        return openai_record(turns=turns)
    if fmt == SHAREGPT:
        return sharegpt_record(turns=turns)
    raise ValueError(f"format: {fmt!r} is not one of {', '.join(TEXT_FORMATS)}")


def hf_messages(turns):
    """The chat column of the Hugging Face export: role/content, as chat templates and TRL expect."""
    return [{"role": OPENAI_ROLE[t["role"]], "content": t["text"]} for t in turns]


def hf_schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([
        ("id", pa.int64()), ("topic", pa.string()), ("messages", pa.list_(message)),
        ("seed_set", pa.string()), ("source", pa.string()), ("split", pa.string()),
    ])


def hf_dataset_info():
    """dataset_info.json of the Hugging Face export: what datasets (the pinned version) writes for hf_schema().
    Written by the export without importing datasets (80 MB of memory); tests/test_formats.py compares it with
    datasets' own output, so an upgrade that changes the layout fails a test instead of writing a bad folder."""
    def value(dtype):
        return {"dtype": dtype, "_type": "Value"}

    return {"description": "", "citation": "", "homepage": "", "license": "", "features": {
        "id": value("int64"), "topic": value("string"),
        "messages": {"feature": {"role": value("string"), "content": value("string")}, "_type": "List"},
        "seed_set": value("string"), "source": value("string"), "split": value("string"),
    }}


class CorpusWriter:
    """Streams records of one text format into a binary file: JSONL one per line; Baize JSON as a list written
    "[\\n" + records joined by ",\\n" + "\\n]\\n", so a million dialogues never sit in memory. Bytes depend only on
    the records and their order ("\\n" line ends, UTF-8)."""

    def __init__(self, fmt, fileobj):
        if fmt not in TEXT_FORMATS:
            raise ValueError(f"format: {fmt!r} is not one of {', '.join(TEXT_FORMATS)}")
        self.fmt = fmt
        self.file = fileobj
        self.count = 0
        self._closed = False
        if fmt == BAIZE:
            self.file.write(b"[")

    def write(self, *, topic, turns):
        self.write_many([self.encode(topic=topic, turns=turns)])

    def encode(self, *, topic, turns):
        """One record's bytes, without separators: what write_many takes (the export renders rows as it reads
        them and may write them later, in shuffled order)."""
        return dumps_bytes(render_record(self.fmt, topic=topic, turns=turns))

    def write_many(self, lines):
        """Write records rendered by encode (bytes or memoryviews), in order, with one write."""
        if not lines:
            return
        if self.fmt == BAIZE:
            self.file.write((b",\n" if self.count else b"\n") + b",\n".join(lines))
        else:
            self.file.write(b"\n".join(lines) + b"\n")
        self.count += len(lines)

    def close(self):
        if not self._closed and self.fmt == BAIZE:
            self.file.write(b"\n]\n")
        self._closed = True


# --- reading ------------------------------------------------------------------------------------------------

def parse_baize_input(text):
    """Turns from a Baize "input" string: the exact inverse of baize_input. Text before the first human marker
    (the preamble) is dropped; the trailing empty human prompt is dropped; nothing else is trimmed."""
    if not isinstance(text, str):
        raise FormatError("input", "must be a string")
    pieces = _BAIZE_SPLIT.split(text)
    # pieces = [before, marker, text, marker, text, ...]
    if len(pieces) < 3:
        raise FormatError("input", f"no line starting with {BAIZE_HUMAN} found")
    turns = []
    for index in range(1, len(pieces), 2):
        body = pieces[index + 1]
        last = index + 2 >= len(pieces)
        if not last:
            # The newline before the next marker is the separator, not part of the turn.
            body = body[:-1] if body.endswith("\n") else body
        elif body.endswith("\n"):
            body = body[:-1]
        turns.append({"role": _BAIZE_ROLE[pieces[index]], "text": body})
    if turns and turns[-1]["role"] == HUMAN and turns[-1]["text"] == "":
        turns.pop()
    return _valid(turns, "input")


def parse_baize(record):
    _require_object(record)
    topic = record.get("topic")
    if not isinstance(topic, str):
        raise FormatError("topic", "missing" if topic is None else "must be a string")
    if "input" not in record:
        raise FormatError("input", "missing")
    turns = parse_baize_input(record["input"])
    return ParsedRecord(topic=topic, turns=turns)


def parse_openai(record):
    _require_object(record)
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise FormatError("messages", "missing" if messages is None else "must be a list")
    turns, extra = _read_messages(messages, "messages", "role", "content", _OPENAI_READ)
    return ParsedRecord(topic=_first_human(turns, "messages"), turns=turns, extra=extra)


def parse_sharegpt(record):
    _require_object(record)
    conversations = record.get("conversations")
    if not isinstance(conversations, list):
        raise FormatError("conversations", "missing" if conversations is None else "must be a list")
    turns, extra = _read_messages(conversations, "conversations", "from", "value", _SHAREGPT_READ)
    if isinstance(record.get("id"), (str, int)) and not isinstance(record.get("id"), bool):
        extra["id"] = str(record["id"])
    return ParsedRecord(topic=_first_human(turns, "conversations"), turns=turns, extra=extra)


PARSERS = {BAIZE: parse_baize, OPENAI: parse_openai, SHAREGPT: parse_sharegpt}


def parse_record(fmt, record):
    try:
        parser = PARSERS[fmt]
    except KeyError:
        raise ValueError(f"format: {fmt!r} is not one of {', '.join(TEXT_FORMATS)}") from None
    return parser(record)


def _require_object(record):
    if not isinstance(record, dict):
        raise FormatError("record", f"must be a JSON object, got {type(record).__name__}")


def _read_messages(messages, name, role_key, text_key, roles):
    turns, extra = [], {}
    for index, message in enumerate(messages):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise FormatError(where, "must be an object")
        speaker, text = message.get(role_key), message.get(text_key)
        if speaker == _SYSTEM and not turns and "system" not in extra:
            # A leading system prompt is not a turn of the conversation; it is kept beside it.
            if not isinstance(text, str):
                raise FormatError(f"{where}.{text_key}", "must be a string")
            extra["system"] = text
            continue
        if not isinstance(speaker, str) or speaker not in roles:
            raise FormatError(f"{where}.{role_key}", f"{speaker!r} is not one of {', '.join(sorted(roles))}"
                              + (" (a system message is accepted only first)" if speaker == _SYSTEM else ""))
        if not isinstance(text, str):
            raise FormatError(f"{where}.{text_key}", "missing" if text is None else "must be a string")
        turns.append({"role": roles[speaker], "text": text})
    try:
        return validate_turns(turns), extra
    except TurnsError as error:
        # TurnsError counts turns; name the list position the user sees (a leading system message shifts it).
        match = re.match(r"turn (\d+): (.*)", str(error))
        if not match:
            raise FormatError(name, str(error)) from None
        position = int(match.group(1)) + (1 if "system" in extra else 0)
        raise FormatError(f"{name}[{position}].{role_key}", match.group(2)) from None


def _valid(turns, name):
    if not turns:
        raise FormatError(name, "no turns")
    try:
        return validate_turns(turns)
    except TurnsError as error:
        raise FormatError(name, str(error)) from None


def _first_human(turns, name):
    if not turns:
        raise FormatError(name, "no turns")
    return turns[0]["text"]
