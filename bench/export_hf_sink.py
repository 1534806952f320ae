"""The Hugging Face export's own work, without the database: collection.export_hf.HfSink against the sink it
replaced (the per-row Python version, copied below as OldHfSink, for comparison only).

    .venv/bin/python bench/export_hf_sink.py [--n 200000 1000000] [--batch 3000] [--sinks old new] [--repeat 1]

Rows are made in memory like bench/export.py's (4 turns, about 1,200 characters in all, non-ASCII and quotes),
with the turns as the JSON text Postgres gives for jsonb, a batch at a time so the input does not count in the
memory figure. Each (sink, N) runs in a fresh child process: encode of every row, write_many in batches of
--batch rows, close(). It reports its wall and CPU totals (CPU: every thread of the process), the seconds spent
inside the sink's calls, and its peak RSS (ru_maxrss). A baseline child that only makes the rows runs first;
sink_s and sink_cpu_s are a run's totals less the baseline's: the sink's own cost, counting what its writer
thread does while the next rows are made. CPU seconds are steadier than wall seconds when the machine is shared
(the load average is printed with each run; --repeat runs each (sink, N) again, in turn). Every file the sinks
write is compared byte for byte (same_bytes). Needs no Django settings and no database.
"""
import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from collection import formats  # noqa: E402
from collection.export_hf import HF_SHARD, HfSink  # noqa: E402

OLD_BATCH_ROWS = 2_000


class OldHfSink:
    """FOR COMPARISON ONLY: the sink collection/exporting.py had before collection/export_hf.py (a dict per
    message, orjson.loads twice per row, RecordBatch.from_pydict), with write_many added as a loop."""

    def __init__(self, workdir, splits):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = formats.hf_schema()
        self.root = workdir / "files"
        (self.root / "parquet").mkdir(parents=True)
        self.arrow_paths = {split: self.root / "dataset" / split / HF_SHARD for split in splits}
        for path in self.arrow_paths.values():
            path.parent.mkdir(parents=True)
        self.sinks = {split: pa.OSFile(str(path), "wb") for split, path in self.arrow_paths.items()}
        self.streams = {split: pa.ipc.new_stream(self.sinks[split], self.schema) for split in splits}
        self.parquet = {split: pq.ParquetWriter(str(self.root / "parquet" / f"{split}.parquet"), self.schema,
                                                compression="zstd") for split in splits}
        self.buffers = {split: self._empty() for split in splits}
        self.written = dict.fromkeys(splits, 0)
        self.closed = False

    def _empty(self):
        return {name: [] for name in self.schema.names}

    def encode(self, row):
        return orjson.dumps(row)

    def write_many(self, split, pieces):
        for data in pieces:
            self.write_encoded(split, data)

    def write_encoded(self, split, data):
        pk, topic, turns, seed_set, source = orjson.loads(data)
        self.written[split] += 1
        buffer = self.buffers[split]
        buffer["id"].append(pk)
        buffer["topic"].append(topic)
        buffer["messages"].append(formats.hf_messages(orjson.loads(turns)))
        buffer["seed_set"].append(seed_set)
        buffer["source"].append(source)
        buffer["split"].append(split)
        if len(buffer["id"]) >= OLD_BATCH_ROWS:
            self._flush(split)

    def _flush(self, split):
        buffer = self.buffers[split]
        if buffer["id"]:
            batch = self.pa.RecordBatch.from_pydict(buffer, schema=self.schema)
            self.streams[split].write_batch(batch)
            self.parquet[split].write_batch(batch)
        self.buffers[split] = self._empty()

    def close(self):
        if self.closed:
            return {}
        self.closed = True
        for split in self.streams:
            self._flush(split)
            self.streams[split].close()
            self.sinks[split].close()
            self.parquet[split].close()
        info = json.dumps(formats.hf_dataset_info())
        for split, path in self.arrow_paths.items():
            (path.parent / "dataset_info.json").write_text(info, encoding="utf-8")
            state = {
                "_data_files": [{"filename": HF_SHARD}], "_fingerprint": _file_sha256(path)[:16],
                "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                "_output_all_columns": False, "_split": split,
            }
            (path.parent / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        (self.root / "dataset" / "dataset_dict.json").write_text(json.dumps({"splits": list(self.arrow_paths)}),
                                                                encoding="utf-8")
        return {"dataset": self.root / "dataset",
                **{f"parquet/{s}": self.root / "parquet" / f"{s}.parquet" for s in self.streams}}


class NoSink:
    """The baseline: the rows are made, nothing is written. Subtracted from the others' totals."""

    def __init__(self, workdir, splits):
        self.written = dict.fromkeys(splits, 0)

    def encode(self, row):
        return b""

    def write_many(self, split, pieces):
        self.written[split] += len(pieces)

    def close(self):
        return {}


SINKS = {"none": NoSink, "old": OldHfSink, "new": HfSink}


def _file_sha256(path):
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def md5(number):
    return hashlib.md5(str(number).encode()).hexdigest()


def make_rows(start, stop):
    """Rows (id, topic, turns_text, seed_set, source) like bench/export.py's, turns as Postgres prints jsonb."""
    rows = []
    for g in range(start, stop):
        turns = [
            {"role": "human", "text": f"Question {g} about {md5(g)}?"},
            {"role": "ai", "text": (md5(g + 1) + " ") * 14 + 'Ünïcödé ✓ "quoted"'},
            {"role": "human", "text": f"And a follow-up on {md5(g + 2)}?"},
            {"role": "ai", "text": (md5(g + 3) + " ") * 16 + "\nDone."},
        ]
        text = json.dumps(turns, ensure_ascii=False)  # jsonb text: ", " and ": " separators, UTF-8 as is
        rows.append((g, f"How do I keep item {g} in shape? {md5(g)[:8]}", text, "bench-export", "generated"))
    return rows


def child(kind, n, batch, folder):
    sink = SINKS[kind](Path(folder), ("train",))
    encoding = writing = 0.0
    encode = sink.encode
    started, started_cpu = time.perf_counter(), _cpu_seconds()
    for start in range(1, n + 1, batch):
        rows = make_rows(start, min(start + batch, n + 1))
        began = time.perf_counter()
        pieces = [encode(row) for row in rows]
        encoded = time.perf_counter()
        sink.write_many("train", pieces)
        encoding += encoded - began
        writing += time.perf_counter() - encoded
    began = time.perf_counter()
    files = sink.close()
    closing = time.perf_counter() - began
    total, total_cpu = time.perf_counter() - started, _cpu_seconds() - started_cpu
    written = sorted(p for p in (Path(folder) / "files").rglob("*") if p.is_file())
    print(json.dumps({
        "total_s": round(total, 2), "total_cpu_s": round(total_cpu, 2),
        "in_calls_s": round(encoding + writing + closing, 2), "encode_s": round(encoding, 2),
        "write_many_s": round(writing, 2), "close_s": round(closing, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pandas_imported": "pandas" in sys.modules,  # pyarrow imports it to convert Python objects: 50 MB
        "rows": sink.written["train"],
        "bytes": {name: path.stat().st_size for name, path in files.items() if path.is_file()},
        "sha256": {str(p.relative_to(folder)): _file_sha256(p) for p in written},
    }))


def _cpu_seconds():
    """User + system time of this process, all its threads (Arrow's and the sink's writer thread included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=3_000)
    parser.add_argument("--sinks", nargs="+", choices=list(SINKS)[1:], default=list(SINKS)[1:])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", nargs=3, metavar=("SINK", "N", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, folder = args.child
        child(kind, int(n), args.batch, folder)
        return
    print(json.dumps({"python": platform.python_version(), "cpus": os.cpu_count(),
                      "load_average_before": [round(x, 2) for x in os.getloadavg()]}))
    for n in args.n:
        digests = {}
        for _ in range(args.repeat):
            baseline = None
            for kind in ["none", *args.sinks]:
                with tempfile.TemporaryDirectory(prefix="bench-hf-") as folder:
                    out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--child", kind,
                                          str(n), folder], capture_output=True, text=True, check=True).stdout
                result = json.loads(out)
                if kind == "none":
                    baseline = result
                    continue
                digests[kind] = json.dumps(result.pop("sha256"), sort_keys=True)
                # The sink's own cost: the run's totals less the baseline's (making the rows), so work the
                # writer thread does while the next rows are made is counted, in CPU time at least.
                added = {"sink_s": round(result["total_s"] - baseline["total_s"], 2),
                         "sink_cpu_s": round(result["total_cpu_s"] - baseline["total_cpu_s"], 2)}
                print(json.dumps({"sink": kind, "n": n, **added, **result,
                                  "load_average": [round(x, 2) for x in os.getloadavg()]}), flush=True)
        if len(digests) > 1:
            # Every file (Arrow, Parquet, metadata) the same, byte for byte, whichever sink wrote it.
            print(json.dumps({"n": n, "same_bytes": len(set(digests.values())) == 1}))


if __name__ == "__main__":
    main()
