"""The Hugging Face format of the corpus export (collection.exporting): a DatasetDict folder in the
datasets.save_to_disk layout (one Arrow stream file per split, with the metadata files save_to_disk writes around
it) and a Parquet file per split, both with the columns of formats.hf_schema().

Rows arrive as the export reads them, at a million dialogues, so the per-row work is small: `encode` makes a JSON
line with the turns JSON spliced in unparsed; `write_many` parses HF_BATCH_ROWS lines at a time with Arrow's JSON
reader and builds the messages column with Arrow compute (roles mapped as formats.hf_messages maps them), all in
C, instead of a Python dict per message; a writer thread writes each batch to the files meanwhile. The files
depend only on the rows and their order: batches are always HF_BATCH_ROWS rows, however the caller groups them,
and they are the bytes pyarrow writes for the same rows built from Python (tests/test_export_hf.py).
"""
import contextlib
import hashlib
import json
import os
import queue
import threading
from array import array

import orjson

from collection import formats

HF_BATCH_ROWS = 2_000
HF_SHARD = "data-00000-of-00001.arrow"  # one shard per split; load_from_disk takes any size
# Our turn roles, in the order of the chat roles they become (formats.OPENAI_ROLE).
_ROLES = tuple(formats.OPENAI_ROLE)


class HfSink:
    """Hugging Face dataset: Arrow batches go to a Parquet file per split and to the Arrow stream file of the
    save_to_disk layout, written in place (see _write_dataset_metadata): nothing is read back or mapped.

    encode((id, topic, turns_text, seed_set_name, source)) -> bytes, once per row as it is read (turns_text is
    the turns column as JSON text); write_many(split, pieces) with those bytes, in output order; close() -> the
    files written. `written` counts rows per split. This thread parses the rows into record batches; a writer
    thread (_Writer) writes them to the files meanwhile."""

    def __init__(self, workdir, splits):
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pa_json
        import pyarrow.parquet as pq

        self.pa = pa
        self.pc = pc
        self.pa_json = pa_json
        self.schema = formats.hf_schema()
        self.messages_type = self.schema.field("messages").type
        self.message_fields = list(self.messages_type.value_type)
        # What encode writes: the id, [topic, seed set, source], and the turns as they are stored.
        turn = pa.struct([("role", pa.string()), ("text", pa.string())])
        self.parse_options = pa_json.ParseOptions(
            explicit_schema=pa.schema([("id", pa.int64()), ("m", pa.list_(pa.string())), ("turns", pa.list_(turn))]),
            unexpected_field_behavior="ignore")
        self.roles = _strings(pa, _ROLES)
        self.chat_roles = _strings(pa, [formats.OPENAI_ROLE[role] for role in _ROLES])
        self.split_columns = {split: _strings(pa, [split] * HF_BATCH_ROWS) for split in splits}
        # Positions in "m", as Arrow scalars (a Python int would be converted through pandas).
        self.meta_positions = list(pa.Array.from_buffers(pa.int32(), 3, [None, pa.py_buffer(array("i", [0, 1, 2]))]))

        self.root = workdir / "files"
        (self.root / "parquet").mkdir(parents=True)
        self.arrow_paths = {split: self.root / "dataset" / split / HF_SHARD for split in splits}
        for path in self.arrow_paths.values():
            path.parent.mkdir(parents=True)
        self.parquet_paths = {split: self.root / "parquet" / f"{split}.parquet" for split in splits}
        self.writer = _Writer(pa, pq, self.schema, self.arrow_paths, self.parquet_paths)
        # Rows of the next batch not parsed yet: one block of JSON lines (copied, so the caller may reuse the
        # memory its pieces point into) and how many rows it holds.
        self.held = dict.fromkeys(splits, b"")
        self.held_rows = dict.fromkeys(splits, 0)
        self.written = dict.fromkeys(splits, 0)
        self.files = None

    def encode(self, row):
        """One row as one JSON object, {"id", "m": [topic, seed set, source], "turns"}, the turns text spliced in
        as it came from the database, unparsed: Arrow parses it in write_many (jsonb text has no line breaks;
        _parse copes with JSON that has). One orjson call and bytes formatting: this runs a million times, and
        half the cost of three orjson calls, or of one on a dict holding an orjson.Fragment."""
        pk, topic, turns, seed_set, source = row
        return b'{"id":%d,"m":%b,"turns":%b}' % (pk, orjson.dumps((topic, seed_set, source)), turns.encode("utf-8"))

    def write_many(self, split, pieces):
        """Append rows (what encode returned: bytes or memoryviews, in output order) to `split`."""
        start, count = 0, len(pieces)
        while self.held_rows[split] + count - start >= HF_BATCH_ROWS:
            take = HF_BATCH_ROWS - self.held_rows[split]
            lines = list(pieces[start:start + take])
            if self.held_rows[split]:
                lines.insert(0, self.held[split])
            lines.append(b"")
            self.held[split], self.held_rows[split] = b"", 0
            self._add_batch(split, b"\n".join(lines), HF_BATCH_ROWS)
            start += take
        if start < count:
            lines = list(pieces[start:])
            if self.held_rows[split]:
                lines.insert(0, self.held[split])
            self.held[split] = b"\n".join(lines)
            self.held_rows[split] += count - start

    def write_encoded(self, split, data):
        self.write_many(split, [data])

    def _add_batch(self, split, block, rows):
        """Parse `rows` JSON lines into one record batch and hand it to the writer."""
        pa = self.pa
        table = self._parse(block, rows)
        turns = table.column("turns").chunk(0)
        steps = turns.values
        roles = steps.field("role")
        texts = steps.field("text")
        if turns.null_count or steps.null_count or texts.null_count:
            raise ValueError(f"{split}: a dialogue without turns, or a turn without text")
        which = self.pc.index_in(roles, value_set=self.roles)
        if which.null_count:
            unknown = roles.filter(which.is_null()).unique().to_pylist()
            raise ValueError(f"{split}: turn role {unknown[0]!r} is not one of {', '.join(_ROLES)}")
        chat = pa.StructArray.from_arrays([self.chat_roles.take(which), texts], fields=self.message_fields)
        messages = pa.ListArray.from_arrays(turns.offsets, chat, type=self.messages_type)
        # A slice of the full column would carry its whole value buffer into the Arrow file: a new one, exact.
        split_column = self.split_columns[split] if rows == HF_BATCH_ROWS else _strings(pa, [split] * rows)
        meta = table.column("m").chunk(0)
        topic, seed_set, source = (self.pc.list_element(meta, n) for n in self.meta_positions)
        batch = pa.RecordBatch.from_arrays(
            [table.column("id").chunk(0), topic, messages, seed_set, source, split_column], schema=self.schema)
        self.writer.put(split, batch)
        self.written[split] += rows

    def _parse(self, block, rows):
        """The rows of `block` (JSON lines) as a table in one chunk. On this thread alone: parsing on two threads
        took more CPU time and 15 MB more memory, and was no faster once the writer thread and the database
        reader have the other core."""
        read_options = self.pa_json.ReadOptions(use_threads=False, block_size=len(block) + 1)
        try:
            table = self.pa_json.read_json(self.pa.BufferReader(block), read_options=read_options,
                                           parse_options=self.parse_options)
        except self.pa.ArrowInvalid:
            # Turns JSON with line breaks between its tokens (pretty-printed; never what Postgres or Django
            # write) splits its row: put each row on one line and parse again. A row that is not JSON raises.
            lines = [orjson.dumps(row) for row in _json_values(block.decode("utf-8"))]
            table = self.pa_json.read_json(self.pa.BufferReader(b"\n".join(lines) + b"\n"),
                                           read_options=read_options, parse_options=self.parse_options)
        if table.num_rows != rows:
            raise ValueError(f"{rows} rows encoded, {table.num_rows} parsed")
        return table.combine_chunks()

    def close(self):
        """Write what is held, close the files and write the dataset metadata; the files, by name. Closing
        again returns the same."""
        if self.files is not None:
            return self.files
        try:
            for split in self.held:
                if self.held_rows[split]:
                    block, rows = self.held[split] + b"\n", self.held_rows[split]
                    self.held[split], self.held_rows[split] = b"", 0
                    self._add_batch(split, block, rows)
        finally:
            digests = self.writer.finish()
            self.files = {"dataset": self.root / "dataset",
                          **{f"parquet/{split}": path for split, path in self.parquet_paths.items()}}
        self._write_dataset_metadata(digests)
        return self.files

    def _write_dataset_metadata(self, digests):
        """The rest of what DatasetDict.save_to_disk writes around the Arrow files: dataset_dict.json, and per
        split dataset_info.json and state.json. Writing them here instead of calling save_to_disk saves a full
        copy of the data, and keeps memory flat: save_to_disk reads the whole table back through a memory map,
        and importing datasets alone costs 80 MB. tests/test_export.py checks the folder with load_from_disk and
        against what save_to_disk writes; tests/test_formats.py checks dataset_info.json."""
        info = json.dumps(formats.hf_dataset_info())
        for split, path in self.arrow_paths.items():
            (path.parent / "dataset_info.json").write_text(info, encoding="utf-8")
            state = {
                "_data_files": [{"filename": HF_SHARD}],
                # The Arrow file's sha256, not a temporary path: the same rows give the same bytes.
                "_fingerprint": digests[split][:16],
                "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                "_output_all_columns": False, "_split": split,
            }
            (path.parent / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        (self.root / "dataset" / "dataset_dict.json").write_text(json.dumps({"splits": list(self.arrow_paths)}),
                                                                encoding="utf-8")


class _Writer:
    """Writes record batches, in the order given, to each split's Arrow stream file and Parquet file (a row group
    per batch), and hashes the Arrow file as it grows (the fingerprint in state.json), on a thread of its own:
    while it writes, the export's thread parses the next rows. pyarrow lets go of the interpreter lock while it
    writes and hashlib while it hashes, so the two run side by side. The queue holds one batch: memory stays
    bounded, and a writer that falls behind holds up the parsing. An error on the thread is raised by the next put
    or by finish."""

    def __init__(self, pa, pq, schema, arrow_paths, parquet_paths):
        self.sinks, self.streams, self.parquet, self.readers, self.hashes, self.hashed = {}, {}, {}, {}, {}, {}
        try:
            for split, path in arrow_paths.items():
                self.sinks[split] = pa.OSFile(str(path), "wb")
                self.streams[split] = pa.ipc.new_stream(self.sinks[split], schema)
                self.readers[split] = os.open(path, os.O_RDONLY)
                self.hashes[split], self.hashed[split] = hashlib.sha256(), 0
                self.parquet[split] = pq.ParquetWriter(str(parquet_paths[split]), schema, compression="zstd")
        except BaseException:
            self._close_files()
            raise
        self.queue = queue.Queue(maxsize=1)
        self.error = None
        self.thread = threading.Thread(target=self._run, name="export-hf-writer", daemon=True)
        self.thread.start()

    def put(self, split, batch):
        self._raise()
        self.queue.put((split, batch))

    def finish(self):
        """Wait for the writes, close the files; the sha256 of each split's Arrow file. Raises the thread's
        error, after closing the files, if it had one."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        try:
            self._raise()
            for split in list(self.streams):
                self.streams.pop(split).close()  # writes the end-of-stream marker (again at each close)
                self._hash(split)
            return {split: digest.hexdigest() for split, digest in self.hashes.items()}
        finally:
            self._close_files()

    def _run(self):
        while (job := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so put never blocks; finish raises the error
            split, batch = job
            try:
                self.streams[split].write_batch(batch)
                self._hash(split)
                self.parquet[split].write_batch(batch)
            except BaseException as error:  # noqa: BLE001 - raised on the export's thread
                self.error = error

    def _hash(self, split):
        end = self.sinks[split].tell()
        self.hashes[split].update(os.pread(self.readers[split], end - self.hashed[split], self.hashed[split]))
        self.hashed[split] = end

    def _raise(self):
        if self.error is not None:
            raise self.error

    def _close_files(self):
        for stream in self.streams.values():
            with contextlib.suppress(Exception):
                stream.close()
        self.streams = {}
        for handle in [*self.sinks.values(), *self.parquet.values()]:
            handle.close()
        for descriptor in self.readers.values():
            os.close(descriptor)
        self.readers = {}


def _json_values(text):
    """The JSON values in `text`, one after another, whatever whitespace is between and inside them."""
    decoder = json.JSONDecoder()
    end = 0
    while True:
        while end < len(text) and text[end] in " \t\r\n":
            end += 1
        if end == len(text):
            return
        value, end = decoder.raw_decode(text, end)
        yield value


def _strings(pa, values):
    """A string array of `values`, built from its buffers: pa.array on Python objects imports pandas (50 MB of
    memory, when the export must stay under 300 MB)."""
    data = [value.encode("utf-8") for value in values]
    offsets = array("i", [0])
    for item in data:
        offsets.append(offsets[-1] + len(item))
    return pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(data)))
