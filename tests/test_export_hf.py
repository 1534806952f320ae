"""The Hugging Face export's sink (collection.export_hf.HfSink) fed directly: text that is hard to carry through
JSON and Arrow comes out as formats.hf_messages gives it, in the Arrow file, the Parquet file and load_from_disk;
the files depend only on the rows, not on how they are handed over. The turns text is what Postgres prints for
jsonb (real Postgres), and what json.dumps writes (SQLite's JSON text: non-ASCII as \\u escapes)."""
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.db import connection

from collection import formats
from collection.export_hf import HF_BATCH_ROWS, HF_SHARD, HfSink

TRICKY = [
    "Ünïcödé, 中文, العربية, עברית, emoji 🙂👩‍👩‍👧 and a flag 🇳🇴",
    'He said "quoted" and \'single\' and `back`',
    "a backslash \\ and \\n (not a newline) and \\u0041 and a trailing backslash \\",
    "line one\nline two\r\nline three\rend",
    "tab\tbell\x07 escape\x1b unit separator\x1f delete\x7f form feed\x0c backspace\x08",
    "line separators \u2028 and \u2029 and a BOM \ufeff",
    '"}, {"role": "ai", "text": "injected"}]}\n{"id": 1}',
    "",
    " ",
    "x" * 5000,
]


def tricky_turns(number):
    """Dialogue `number`: 1 to 40 turns, each text one of TRICKY (rotating), roles alternating from human."""
    count = 1 + number % 40
    return [{"role": "human" if k % 2 == 0 else "ai", "text": TRICKY[(number + k) % len(TRICKY)]}
            for k in range(count)]


def jsonb_text(turns_list):
    """The turns as Postgres prints a jsonb column (what the export reads with turns::text)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT value::jsonb::text FROM unnest(%s::text[]) WITH ORDINALITY AS t(value, n) ORDER BY n",
                       [[json.dumps(turns) for turns in turns_list]])
        return [text for (text,) in cursor.fetchall()]


def make_rows(count, *, as_text=None):
    turns_list = [tricky_turns(n) for n in range(count)]
    texts = as_text(turns_list) if as_text else jsonb_text(turns_list)
    rows = [(10**15 + n, f"topic {n}: {TRICKY[n % len(TRICKY)]}", texts[n], 'set "Ω"', f"import:openai:{n % 3}.jsonl")
            for n in range(count)]
    return rows, turns_list


def expected(rows, turns_list, split):
    return [{"id": pk, "topic": topic, "messages": formats.hf_messages(turns), "seed_set": seed_set,
             "source": source, "split": split} for (pk, topic, _, seed_set, source), turns in zip(rows, turns_list)]


def write(folder, rows_by_split, group=1000):
    sink = HfSink(folder, tuple(rows_by_split))
    for split, rows in rows_by_split.items():
        pieces = [sink.encode(row) for row in rows]
        for start in range(0, len(pieces), group):
            sink.write_many(split, pieces[start:start + group])
    return sink, sink.close()


def arrow_rows(folder, split):
    with pa.OSFile(str(folder / "files" / "dataset" / split / HF_SHARD), "rb") as handle:
        table = pa.ipc.open_stream(handle).read_all()
    assert table.schema == formats.hf_schema()
    return table.to_pylist()


def digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "files").rglob("*")) if p.is_file()}


def test_it_writes_tricky_text_as_hf_messages_gives_it(db, tmp_path):
    import datasets

    rows, turns_list = make_rows(HF_BATCH_ROWS + 345)  # a full batch and a part
    train, validation = rows[:HF_BATCH_ROWS + 300], rows[HF_BATCH_ROWS + 300:]
    sink, files = write(tmp_path, {"train": train, "validation": validation}, group=777)
    want = {"train": expected(train, turns_list, "train"),
            "validation": expected(validation, turns_list[len(train):], "validation")}
    assert sink.written == {"train": len(train), "validation": len(validation)}
    for split in ("train", "validation"):
        assert arrow_rows(tmp_path, split) == want[split]
        table = pq.read_table(files[f"parquet/{split}"])
        assert table.schema.remove_metadata() == formats.hf_schema()
        assert table.to_pylist() == want[split]
    loaded = datasets.load_from_disk(str(files["dataset"]))
    assert loaded["validation"].to_list() == want["validation"]
    assert loaded["train"][HF_BATCH_ROWS + 1] == want["train"][HF_BATCH_ROWS + 1]
    assert len(pq.ParquetFile(files["parquet/train"]).metadata.to_dict()["row_groups"]) == 2  # a batch each


def test_it_reads_json_text_with_escapes_and_line_breaks(db, tmp_path):
    # SQLite's JSON text (json.dumps: \u escapes, surrogate pairs for emoji) and pretty-printed JSON (line breaks
    # between tokens, which would split a JSON line) give the same rows as Postgres's jsonb text.
    rows, turns_list = make_rows(60)
    escaped, _ = make_rows(60, as_text=lambda turns_list: [json.dumps(t) for t in turns_list])
    pretty, _ = make_rows(60, as_text=lambda turns_list: [json.dumps(t, indent=2) for t in turns_list])
    assert "\\ud83d" in escaped[0][2] and "\n" in pretty[0][2]
    for name, variant in (("escaped", escaped), ("pretty", pretty)):
        write(tmp_path / name, {"train": variant})
        assert arrow_rows(tmp_path / name, "train") == expected(rows, turns_list, "train")


def test_it_writes_the_same_bytes_however_the_rows_are_handed_over(db, tmp_path):
    rows, _ = make_rows(HF_BATCH_ROWS * 2 + 5)
    write(tmp_path / "one-call", {"train": rows}, group=len(rows))
    sink = HfSink(tmp_path / "one-by-one", ("train",))
    for row in rows:
        sink.write_encoded("train", sink.encode(row))
    sink.close()
    # Memoryviews into one buffer, as the export's spool hands them back.
    sink = HfSink(tmp_path / "views", ("train",))
    pieces = [sink.encode(row) for row in rows]
    blob, offsets = memoryview(b"".join(pieces)), [0]
    for piece in pieces:
        offsets.append(offsets[-1] + len(piece))
    views = [blob[a:b] for a, b in zip(offsets, offsets[1:])]
    for start in range(0, len(views), 1999):
        sink.write_many("train", views[start:start + 1999])
    sink.close()
    reference = digests(tmp_path / "one-call")
    assert len(reference) == 5  # Arrow, state.json, dataset_info.json, dataset_dict.json, Parquet
    assert digests(tmp_path / "one-by-one") == reference
    assert digests(tmp_path / "views") == reference
    state = json.loads((tmp_path / "views" / "files" / "dataset" / "train" / "state.json").read_text())
    arrow = (tmp_path / "views" / "files" / "dataset" / "train" / HF_SHARD).read_bytes()
    assert state["_fingerprint"] == hashlib.sha256(arrow).hexdigest()[:16]


def test_it_writes_the_files_pyarrow_writes_from_the_rows(db, tmp_path):
    # The reference: batches of HF_BATCH_ROWS built from Python rows (as the sink before this one did), written
    # with the same writers. Same bytes, the last short batch included.
    rows, turns_list = make_rows(HF_BATCH_ROWS + 3)
    _, files = write(tmp_path / "ours", {"train": rows})
    want = expected(rows, turns_list, "train")
    schema = formats.hf_schema()
    (tmp_path / "reference").mkdir()
    arrow, parquet = tmp_path / "reference" / HF_SHARD, tmp_path / "reference" / "train.parquet"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as stream, pq.ParquetWriter(
            str(parquet), schema, compression="zstd") as writer:
        for start in range(0, len(want), HF_BATCH_ROWS):
            batch = pa.RecordBatch.from_pylist(want[start:start + HF_BATCH_ROWS], schema=schema)
            stream.write_batch(batch)
            writer.write_batch(batch)
    assert (files["dataset"] / "train" / HF_SHARD).read_bytes() == arrow.read_bytes()
    assert files["parquet/train"].read_bytes() == parquet.read_bytes()


@pytest.mark.parametrize("turns, message", [
    ('[{"role": "system", "text": "hi"}]', "'system' is not one of"),
    ('[{"role": "human"}]', "without text"),
    ("null", "without turns"),
    ('[{"role": "human", "text": "hi"}', "Expect|Invalid|JSON"),
])
def test_it_refuses_turns_it_cannot_write_and_still_closes(tmp_path, turns, message):
    sink = HfSink(tmp_path, ("train",))
    good = [sink.encode((n, "t", '[{"role": "human", "text": "ok"}]', "s", "generated")) for n in range(HF_BATCH_ROWS)]
    sink.write_many("train", good)
    with pytest.raises(ValueError, match=message):
        sink.write_many("train", [sink.encode((1, "t", turns, "s", "generated"))] * HF_BATCH_ROWS)
    files = sink.close()
    assert sink.close() == files
    assert len(arrow_rows(tmp_path, "train")) == HF_BATCH_ROWS == pq.read_table(files["parquet/train"]).num_rows
