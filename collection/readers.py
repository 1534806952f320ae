"""Streaming readers for seed and corpus files: CSV, TSV, JSONL, plain text, Parquet and Hugging Face datasets.

What a user gets: any of these files is read record by record, never whole into memory, and every problem is
reported with where it is ("seeds.csv:line 12", "data.parquet:row 40") and what is wrong with it. No Django here,
so the corpus import and scripts can reuse it.

    for where, record in iter_records("seeds.jsonl"):            # dicts (csv/tsv/jsonl/parquet/hf) or str (txt)
    for where, text in iter_texts("seeds.csv", column="question"):   # just the chosen column, checked to be text

A problem with one record (invalid UTF-8, an over-long line, bad JSON, a missing or non-text value) raises
ReaderError, or, when `on_bad` is given, is passed to it and reading goes on. A problem with the whole file
(missing, empty, truncated Parquet, missing column in the header) always raises, with `fatal=True`.
"""
import codecs
import csv
import gzip
import os
import zlib
from pathlib import Path

import orjson

FORMATS = ("csv", "tsv", "jsonl", "txt", "parquet", "hf")
EXTENSIONS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".txt": "txt", ".text": "txt", ".parquet": "parquet", ".pq": "parquet",
}
# A seed is a question or a topic; 64 KB is far above any real one, and reading line by line with this cap
# keeps a runaway 1 MB line (or a binary file read as text) from being held in memory.
MAX_LINE_BYTES = 64 * 1024
MAX_TEXT_CHARS = 64 * 1024
BATCH_ROWS = 10_000
_DRAIN_CHUNK = 64 * 1024
_BOM = codecs.BOM_UTF8


class ReaderError(Exception):
    """Where (file and line/row) and what is wrong. `fatal`: the whole file is unusable, skipping cannot help."""

    def __init__(self, where, message, *, fatal=False):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
        self.fatal = fatal

    def as_report(self):
        return {"where": self.where, "error": self.message}


def detect_format(path, fmt=None):
    """The format named by `fmt`, or guessed from the extension (".gz" looked through) or the folder layout."""
    path = Path(path)
    if fmt:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise ReaderError(path.name, f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", fatal=True)
        return fmt
    if path.is_dir():
        return "hf"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in EXTENSIONS:
        return EXTENSIONS[suffixes[-1]]
    raise ReaderError(
        path.name,
        f"cannot tell the format from the name; give it explicitly ({', '.join(FORMATS)})",
        fatal=True,
    )


def iter_records(path, fmt=None, *, name=None, columns=None, on_bad=None, max_line_bytes=MAX_LINE_BYTES):
    """Yield (where, record) for every record in the file. See the module docstring."""
    with open_reader(path, fmt, name=name, max_line_bytes=max_line_bytes) as reader:
        yield from reader.records(columns=columns, on_bad=on_bad)


def iter_texts(path, *, column=None, fmt=None, name=None, on_bad=None, max_chars=MAX_TEXT_CHARS,
               max_line_bytes=MAX_LINE_BYTES):
    """Yield (where, text) for the chosen column (plain text files: each line).

    Without `column`: the only column, or one named "text"; several other columns are an error that lists them.
    """
    with open_reader(path, fmt, name=name, max_line_bytes=max_line_bytes) as reader:
        yield from reader.texts(column=column, on_bad=on_bad, max_chars=max_chars)


def open_reader(path, fmt=None, *, name=None, max_line_bytes=MAX_LINE_BYTES):
    path = Path(path)
    name = name or path.name
    if not path.exists():
        raise ReaderError(name, "no such file or folder", fatal=True)
    fmt = detect_format(path, fmt)
    if fmt == "hf":
        return HuggingFaceReader(path, name)
    if path.is_dir():
        raise ReaderError(name, f"is a folder, not a {fmt} file", fatal=True)
    if path.stat().st_size == 0:
        raise ReaderError(name, "the file is empty", fatal=True)
    if fmt == "parquet":
        return ParquetReader(path, name)
    return {"csv": CsvReader, "tsv": TsvReader, "jsonl": JsonlReader, "txt": TextReader}[fmt](
        path, name, max_line_bytes=max_line_bytes
    )


def _describe_type(value):
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


class Reader:
    """Base: a context manager with `columns` (known up front for tabular files) and `records()`."""

    unit = "line"

    def __init__(self, path, name):
        self.path = path
        self.name = name
        self.columns = None  # set by tabular readers once the header/schema is read

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        pass

    def where(self, number):
        return f"{self.name}:{self.unit} {number}"

    def records(self, *, columns=None, on_bad=None):
        raise NotImplementedError

    def texts(self, *, column=None, on_bad=None, max_chars=MAX_TEXT_CHARS):
        chosen = self.resolve_column(column) if self.columns is not None else column
        for where, record in self.records(columns=[chosen] if chosen else None, on_bad=on_bad):
            if isinstance(record, str):
                if chosen is not None:
                    _bad(on_bad, where, f"is a JSON string, not an object with a field {chosen!r}")
                    continue
                value = record
            else:
                if chosen is None:
                    chosen = self.resolve_column(None, available=list(record), where=where)
                if chosen not in record:
                    _bad(on_bad, where, f"has no field {chosen!r} (it has: {', '.join(map(str, record)) or 'none'})")
                    continue
                value = record[chosen]
                if value is None:
                    _bad(on_bad, where, f"no value in {chosen!r}")
                    continue
                if not isinstance(value, str):
                    _bad(on_bad, where, f"{chosen!r} holds {_describe_type(value)}, not text")
                    continue
            if len(value) > max_chars:
                _bad(on_bad, where, f"text longer than {max_chars // 1024} KB ({len(value)} characters)")
                continue
            yield where, value

    def resolve_column(self, column, *, available=None, where=None):
        available = self.columns if available is None else available
        where = where or self.header_where()
        listing = ", ".join(map(str, available)) or "none"
        if column:
            if column not in available:
                raise ReaderError(where, f"no column {column!r}; the columns are: {listing}", fatal=True)
            return column
        if len(available) == 1:
            return available[0]
        if "text" in available:
            return "text"
        raise ReaderError(where, f"several columns ({listing}); name the one that holds the seed text", fatal=True)

    def header_where(self):
        return self.name


def _bad(on_bad, where, message):
    error = ReaderError(where, message)
    if on_bad is None:
        raise error
    on_bad(error)


class LineReader(Reader):
    """Reads bytes line by line with a cap on each line, so no single line can take unbounded memory."""

    def __init__(self, path, name, *, max_line_bytes=MAX_LINE_BYTES):
        super().__init__(path, name)
        self.max_line_bytes = max_line_bytes
        self.compressed = path.suffix.lower() == ".gz"
        raw = open(path, "rb")
        self.file = gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw
        self._raw = raw

    def close(self):
        self.file.close()
        self._raw.close()

    def lines(self):
        """Yield (line number, bytes), or (line number, None) for a line over the cap (its rest is skipped)."""
        readline = self.file.readline
        cap = self.max_line_bytes
        number = 0
        try:
            while True:
                line = readline(cap + 1)
                if not line:
                    return
                number += 1
                if number == 1 and line.startswith(_BOM):
                    line = line[len(_BOM):]
                if len(line) > cap and not line.endswith(b"\n"):
                    while True:
                        rest = readline(_DRAIN_CHUNK)
                        if not rest or rest.endswith(b"\n"):
                            break
                    yield number, None
                    continue
                yield number, line
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ReaderError(self.where(number + 1), f"the compressed file is truncated or corrupt ({exc})",
                              fatal=True) from None

    def too_long(self):
        return f"line longer than {self.max_line_bytes // 1024} KB"

    @staticmethod
    def invalid_utf8(exc):
        return f"invalid UTF-8 (byte 0x{exc.object[exc.start]:02x} at byte {exc.start + 1} of the line)"

    def nothing_read(self):
        raise ReaderError(self.name, "the file is empty (no records)", fatal=True)


class TextReader(LineReader):
    """One seed a line; blank lines are separators, not records."""

    def records(self, *, columns=None, on_bad=None):
        seen = 0
        for number, line in self.lines():
            if line is None:
                seen += 1
                _bad(on_bad, self.where(number), self.too_long())
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                seen += 1
                _bad(on_bad, self.where(number), self.invalid_utf8(exc))
                continue
            text = text.rstrip("\r\n")
            if text.strip():
                seen += 1
                yield self.where(number), text
        if not seen:
            self.nothing_read()

    def texts(self, *, column=None, on_bad=None, max_chars=MAX_TEXT_CHARS):
        if column not in (None, "", "text"):
            raise ReaderError(self.name, f"a plain text file has no columns (asked for {column!r})", fatal=True)
        yield from super().texts(column=None, on_bad=on_bad, max_chars=max_chars)


class JsonlReader(LineReader):
    """One JSON value a line: an object (a record) or a string (a seed); blank lines skipped."""

    def records(self, *, columns=None, on_bad=None):
        seen = 0
        loads = orjson.loads
        for number, line in self.lines():
            seen += 1
            if line is None:
                _bad(on_bad, self.where(number), self.too_long())
                continue
            try:
                record = loads(line)
            except orjson.JSONDecodeError as exc:
                if not line.strip():
                    seen -= 1
                    continue
                _bad(on_bad, self.where(number), self._explain(line, exc))
                continue
            if not isinstance(record, (dict, str)):
                _bad(on_bad, self.where(number), f"is {_describe_type(record)}, not a JSON object")
                continue
            if columns and isinstance(record, dict):
                missing = [c for c in columns if c not in record]
                if missing:
                    _bad(on_bad, self.where(number),
                         f"has no field {missing[0]!r} (it has: {', '.join(record) or 'none'})")
                    continue
            yield self.where(number), record
        if not seen:
            self.nothing_read()

    def _explain(self, line, exc):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as utf:
            return self.invalid_utf8(utf)
        if not line.endswith(b"\n"):
            return f"the last line is cut off mid-record (truncated file?): {exc}"
        return f"not valid JSON: {exc}"


class CsvReader(LineReader):
    """Comma-separated with a header row; quoted fields may span lines (the record is named by its first line)."""

    delimiter = ","

    def __init__(self, path, name, *, max_line_bytes=MAX_LINE_BYTES):
        super().__init__(path, name, max_line_bytes=max_line_bytes)
        self._bad_lines = {}
        self._rows = csv.reader(self._decoded_lines(), delimiter=self.delimiter, strict=True)
        self.header_line = 0
        self.columns = self._read_header()

    def _decoded_lines(self):
        # The csv module wants text; a line that is not UTF-8 or is too long is replaced by an empty one (so line
        # numbers stay in step) and remembered, and the record that covers it is reported bad.
        for number, line in self.lines():
            if line is None:
                self._bad_lines[number] = self.too_long()
                yield "\n"
                continue
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._bad_lines[number] = self.invalid_utf8(exc)
                yield "\n"

    def _next_row(self):
        """(first line, last line, fields or None, csv error or None); raises StopIteration at the end."""
        start = self._rows.line_num + 1
        try:
            row = next(self._rows)
            error = None
        except csv.Error as exc:
            row, error = None, str(exc)
        return start, self._rows.line_num, row, error

    def _read_header(self):
        while True:
            try:
                start, end, row, error = self._next_row()
            except StopIteration:
                raise ReaderError(self.name, "the file is empty (no header row)", fatal=True) from None
            bad = self._take_bad(start, end)
            if bad or error:
                number, message = bad[0] if bad else (start, self._csv_problem(error, start))
                raise ReaderError(self.where(number), f"cannot read the header row: {message}", fatal=True)
            if row:
                self.header_line = start
                return [c.strip() for c in row]

    def header_where(self):
        return self.where(self.header_line)

    def _take_bad(self, start, end):
        if not self._bad_lines:
            return []
        found = [(n, self._bad_lines.pop(n)) for n in range(start, end + 1) if n in self._bad_lines]
        return found

    def _csv_problem(self, error, start):
        if "unexpected end of data" in error:
            return "a quoted field is never closed (unterminated quote; truncated file?)"
        if "field larger than field limit" in error:
            return f"{error} (an unterminated quote starting at line {start}?)"
        return error

    def records(self, *, columns=None, on_bad=None):
        header = self.columns
        width = len(header)
        if columns:
            for c in columns:
                self.resolve_column(c)
        read = 0
        while True:
            try:
                start, end, row, error = self._next_row()
            except StopIteration:
                break
            bad = self._take_bad(start, end)
            if bad:
                for number, message in bad:
                    read += 1
                    _bad(on_bad, self.where(number), message)
                continue
            if error:
                read += 1
                _bad(on_bad, self.where(start), self._csv_problem(error, start))
                continue
            if not row:
                continue
            read += 1
            if len(row) != width:
                if len(row) > width or not columns or any(header.index(c) >= len(row) for c in columns):
                    _bad(on_bad, self.where(start), f"has {len(row)} fields, the header has {width}")
                    continue
            yield self.where(start), dict(zip(header, row))
        if not read:
            raise ReaderError(self.name, "the file has a header but no rows", fatal=True)


class TsvReader(CsvReader):
    delimiter = "\t"


class ParquetReader(Reader):
    """Row batches through pyarrow, reading only the columns asked for."""

    unit = "row"

    def __init__(self, path, name):
        super().__init__(path, name)
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ReaderError(name, f"not a readable Parquet file (truncated or corrupt?): {exc}", fatal=True) from None
        self.schema = self.file.schema_arrow
        self.columns = list(self.schema.names)

    def close(self):
        self.file.close()

    def _batches(self, columns):
        return self.file.iter_batches(batch_size=BATCH_ROWS, columns=columns)

    def texts(self, *, column=None, on_bad=None, max_chars=MAX_TEXT_CHARS):
        chosen = self.resolve_column(column)
        kind = self.schema.field(chosen).type
        pa = self._pa
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or getattr(pa.types, "is_string_view", lambda _t: False)(kind)):
            raise ReaderError(self.name, f"column {chosen!r} holds {kind}, not text", fatal=True)
        yield from super().texts(column=chosen, on_bad=on_bad, max_chars=max_chars)

    def records(self, *, columns=None, on_bad=None):
        if columns:
            for c in columns:
                self.resolve_column(c)
        number = 0
        batches = self._batches(columns)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (self._pa.ArrowException, OSError) as exc:
                raise ReaderError(self.where(number + 1), f"cannot read the data (truncated or corrupt?): {exc}",
                                  fatal=True) from None
            for record in self._rows_of(batch):
                number += 1
                yield self.where(number), record
        if not number:
            raise ReaderError(self.name, "the dataset has no rows", fatal=True)

    @staticmethod
    def _rows_of(batch):
        if isinstance(batch, dict):  # datasets' iter(): a dict of column lists
            names = list(batch)
            return (dict(zip(names, values)) for values in zip(*batch.values()))
        return batch.to_pylist()


class HuggingFaceReader(ParquetReader):
    """A dataset written by `save_to_disk`: memory-mapped Arrow, iterated in batches."""

    def __init__(self, path, name):
        Reader.__init__(self, path, name)
        import pyarrow as pa

        self._pa = pa
        if (path / "dataset_dict.json").exists():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "state.json").exists())
            if len(splits) != 1:
                raise ReaderError(
                    name, f"holds several splits ({', '.join(splits)}); give the folder of one, e.g. "
                          f"{name}/{splits[0] if splits else 'train'}", fatal=True)
            path = path / splits[0]
        if not (path / "state.json").exists():
            raise ReaderError(name, "is a folder but not a Hugging Face dataset saved with save_to_disk "
                                    "(no state.json or dataset_dict.json)", fatal=True)
        import datasets

        try:
            self.dataset = datasets.load_from_disk(os.fspath(path))
        except (pa.ArrowException, OSError, ValueError, FileNotFoundError) as exc:
            raise ReaderError(name, f"cannot open the dataset (truncated or corrupt?): {exc}", fatal=True) from None
        self.schema = self.dataset.features.arrow_schema
        self.columns = list(self.dataset.column_names)

    def close(self):
        pass

    def _batches(self, columns):
        dataset = self.dataset.select_columns(columns) if columns else self.dataset
        return iter(dataset.iter(batch_size=BATCH_ROWS))
