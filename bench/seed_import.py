"""Seed import speed: our JSONL import into Postgres against `psql \\copy` of the same rows as CSV.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/baize_bench CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/seed_import.py [--n 1000000] [--repeat 1] [--keep]

Writes N short seeds as JSONL ({"text": ...}) and as CSV in a temporary folder. The CSV holds the finished rows
(set id, text, hash, source, timestamp), so `\\copy` only loads them into a table like the seed table (same
columns, identity, indexes, unique constraint and deferred foreign key): the fastest way the rows could get in.
Our import reads the JSONL, normalizes, hashes, deduplicates and reports progress, through seed_import_execute.
Target: ratio <= 3.
Each attempt starts from an empty seed table (the previous attempt's rows deleted and vacuumed). The database is
migrated if needed; the seed sets and the comparison table are dropped at the end.
"""
import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baize_eval.settings")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from collection.models import Seed, SeedSet, normalize_seed_text, seed_hash  # noqa: E402
from collection.seeding import seed_import_execute, seed_import_start  # noqa: E402

VERBS = ["keep", "grow", "fix", "learn", "cook", "train", "debug", "plan", "store", "clean", "paint", "tune"]
NOUNS = ["basil", "a sourdough starter", "a bicycle chain", "Rust lifetimes", "a budget", "a Postgres index",
         "tomatoes", "a marathon", "a resume", "a garden bed", "a neural network", "a leaky faucet"]


def seed_text(i):
    return f"How do I {VERBS[i % len(VERBS)]} {NOUNS[(i // len(VERBS)) % len(NOUNS)]} ({i})?"


def write_files(folder, n, seed_set_id):
    jsonl, csv_path = folder / "seeds.jsonl", folder / "seeds.csv"
    now = timezone.now().isoformat()
    with open(jsonl, "wb") as j, open(csv_path, "w", newline="") as c:
        writer = csv.writer(c)
        for i in range(n):
            text = seed_text(i)
            j.write(orjson.dumps({"text": text}) + b"\n")
            normalized = normalize_seed_text(text)
            writer.writerow([seed_set_id, normalized, seed_hash(normalized), f"seeds.jsonl:line {i + 1}", now])
    return jsonl, csv_path


def psql_url():
    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgresql://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def time_psql_copy(csv_path):
    table = "bench_seed_copy"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TABLE {table} (LIKE {Seed._meta.db_table} INCLUDING ALL)")
        # LIKE copies columns, identity, indexes and checks but not the foreign key; add it as Django declares it.
        cursor.execute(f"ALTER TABLE {table} ADD FOREIGN KEY (seed_set_id) REFERENCES {SeedSet._meta.db_table} (id) "
                       "DEFERRABLE INITIALLY DEFERRED")
    command = (f"\\copy {table} (seed_set_id, text, text_hash, source_ref, created_at) "
               f"FROM '{csv_path}' WITH (FORMAT csv)")
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", psql_url(), "-c", command], check=True)
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        rows = cursor.fetchone()[0]
        cursor.execute(f"DROP TABLE {table}")
    return elapsed, rows


def time_our_import(jsonl, name):
    job = seed_import_start(path=str(jsonl), seed_set_name=name, enqueue=False)
    started = time.perf_counter()
    job = seed_import_execute(job.pk)
    elapsed = time.perf_counter() - started
    if job.status != "succeeded":
        raise SystemExit(f"import failed: {job.error}")
    return elapsed, job


def empty_seed_table(seed_set):
    Seed.objects.filter(seed_set=seed_set).delete()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM {Seed._meta.db_table}")


def machine_facts():
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}; {os.cpu_count()} cores; load average {load}; Python {platform.python_version()}; "
            f"Postgres {pg}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the imported seed sets")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("Set DATABASE_URL to a Postgres database (and CELERY_BROKER_URL): this compares with psql.")
    call_command("migrate", verbosity=0)
    print(f"machine: {machine_facts()}")
    placeholder = SeedSet.objects.create(name=f"bench-copy-{os.getpid()}")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        jsonl, csv_path = write_files(Path(tmp), args.n, placeholder.pk)
        print(f"wrote {args.n:,} seeds: JSONL {jsonl.stat().st_size / 1e6:.1f} MB, CSV {csv_path.stat().st_size / 1e6:.1f} MB "
              f"in {time.perf_counter() - started:.1f}s")
        created = [placeholder]
        ratios = []
        for attempt in range(1, args.repeat + 1):
            copy_s, copy_rows = time_psql_copy(csv_path)
            ours_s, job = time_our_import(jsonl, f"bench-import-{os.getpid()}-{attempt}")
            created.append(job.seed_set)
            empty_seed_table(job.seed_set)
            ratio = ours_s / copy_s
            ratios.append(ratio)
            print(f"[{attempt}] psql \\copy CSV: {copy_s:.2f}s ({copy_rows:,} rows, {copy_rows / copy_s:,.0f} rows/s)   "
                  f"seed import JSONL: {ours_s:.2f}s ({job.imported:,} imported, {job.duplicates:,} duplicates, "
                  f"{job.rows_read / ours_s:,.0f} rows/s)   ratio {ratio:.2f}")
    print(f"ratio (ours / psql \\copy): best {min(ratios):.2f}, worst {max(ratios):.2f}; target <= 3.00 -> "
          f"{'met' if min(ratios) <= 3 else 'NOT met'}")
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep:
        for seed_set in created:
            Seed.objects.filter(seed_set=seed_set).delete()
            seed_set.delete()


if __name__ == "__main__":
    main()
