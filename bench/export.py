"""Corpus export speed and memory: our export against `psql -c "COPY (SELECT …) TO STDOUT"` over the same rows.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/baize_bench CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/export.py [--n 1000000] [--format openai] [--variants ...] [--repeat 3] [--keep]

Builds N dialogues (4 turns, about 1,200 characters each; 90% approved, 5% flagged, 2% copies of the dialogue
before them) with one generate_series INSERT per 100,000 rows, and stores their MinHash signatures as the corpus
pass does after every run and import (collection.filters.dialogue_signatures; minutes at a million), then times:
  - copy:   psql COPY (SELECT id, topic, turns FROM the dialogues the export picks, ORDER BY id) TO STDOUT into a
            file: the floor for reading those rows out of Postgres;
  - export: export_execute in a fresh child process (as the Celery worker runs it), once per variant: the
            default (shuffled, near-duplicates collapsed), shuffled without the collapse, id order, plain (id
            order without the collapse: the COPY's rows in the COPY's order), with a validation split. Peak memory is the child's max RSS.
Targets (issue 3): time <= 2x copy, peak memory < 300 MB at N = 1,000,000.
The rows are deleted at the end unless --keep (a later run with the same N reuses kept rows).
"""
import argparse
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
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baize_eval.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.files.storage import default_storage  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from collection.filters import dialogue_signatures  # noqa: E402
from collection.models import Dialogue, SeedSet  # noqa: E402

BATCH = 100_000
VARIANTS = {
    "default": {},
    "no-dedupe": {"dedupe": False},
    "id-order": {"shuffle": False},
    "plain": {"shuffle": False, "dedupe": False},  # what the COPY does: the same rows, in id order
    "split-0.1": {"val_fraction": 0.1},
}

INSERT = f"""
INSERT INTO {Dialogue._meta.db_table} (seed_set_id, source, topic, original_turns, raw_output, parse_error,
    generation, finish_reason, language, prompt_tokens, completion_tokens, cost_usd, turns, num_turns, length_chars,
    status, version, is_flagged, search_document, created_at, updated_at)
SELECT %(set)s, 'generated', 'How do I keep item ' || g || ' in shape? ' || left(md5(g::text), 8), t.turns, '', '',
    '{{}}'::jsonb, 'stop', 'en', 0, 0, 0, t.turns, 4, 1200,
    CASE WHEN g %% 10 = 0 THEN 'undecided' ELSE 'approved' END, 1, g %% 20 = 0, '', now(), now()
FROM generate_series(%(start)s, %(stop)s) AS g,
LATERAL (SELECT CASE WHEN g %% 50 = 7 THEN g - 1 ELSE g END AS k) AS copy,
LATERAL (SELECT jsonb_build_array(
    jsonb_build_object('role', 'human', 'text', 'Question ' || k || ' about ' || md5(k::text) || '?'),
    jsonb_build_object('role', 'ai', 'text', repeat(md5((k + 1)::text) || ' ', 14) || 'Ünïcödé ✓ "quoted"'),
    jsonb_build_object('role', 'human', 'text', 'And a follow-up on ' || md5((k + 2)::text) || '?'),
    jsonb_build_object('role', 'ai', 'text', repeat(md5((k + 3)::text) || ' ', 16) || E'\\nDone.')) AS turns) AS t
"""


def machine_facts():
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1), "load_average": [round(x, 2) for x in os.getloadavg()],
        "postgres": pg, "cpu": _cpu_model(),
    }


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def build_rows(n):
    name = f"bench-export-{n}"
    seed_set, created = SeedSet.objects.get_or_create(name=name, defaults={"source": "bench/export.py"})
    rows = Dialogue.objects.filter(seed_set=seed_set)
    changed = rows.count() != n
    if not changed:
        print(f"reusing {n} rows in seed set {name!r}")
    else:
        delete_rows(seed_set)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            for start in range(1, n + 1, BATCH):
                cursor.execute(INSERT, {"set": seed_set.pk, "start": start, "stop": min(start + BATCH - 1, n)})
        print(f"built {n} rows in {time.perf_counter() - started:.1f} s")
    if rows.filter(minhash__isnull=True).exists():
        changed = True
        started = time.perf_counter()
        dialogue_signatures(rows, chunk_size=5000)
        print(f"stored MinHash signatures in {time.perf_counter() - started:.1f} s")
    if changed:
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {Dialogue._meta.db_table}")
    return seed_set


def delete_rows(seed_set):
    # One statement: the ORM would load every id to cascade (the bench rows have no flags or events).
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {Dialogue._meta.db_table} WHERE seed_set_id = %s", [seed_set.pk])


def psql_url():
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (f"postgresql://{db.get('USER') or 'postgres'}{password}@{db.get('HOST') or '127.0.0.1'}:"
            f"{db.get('PORT') or 5432}/{db['NAME']}")


def time_copy(seed_set, folder):
    # The rows the default export writes: approved, unflagged, with turns.
    query = (f"SELECT id, topic, turns FROM {Dialogue._meta.db_table} WHERE seed_set_id = {seed_set.pk} "
             "AND status = 'approved' AND NOT is_flagged AND num_turns > 0 ORDER BY id")
    out = folder / "copy.tsv"
    started = time.perf_counter()
    with open(out, "wb") as handle:
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", psql_url(), "-c",
                        f"COPY ({query}) TO STDOUT"], stdout=handle, check=True)
    elapsed = time.perf_counter() - started
    return {"seconds": round(elapsed, 2), "bytes": out.stat().st_size,
            "rows": sum(1 for _ in open(out, "rb"))}


def time_export(seed_set, fmt, options):
    from collection.exporting import export_start

    export = export_start(fmt=fmt, spec={"seed_set": seed_set.pk, **options}, enqueue=False)
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", str(export.pk)], env=os.environ.copy())
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"export child failed with status {status}")
    export.refresh_from_db()
    if export.status != "succeeded":
        raise SystemExit(f"export {export.pk} failed: {export.error}")
    result = {"seconds": round(elapsed, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
              "bytes": export.size_bytes, "written": export.counts["written"], "counts": export.counts}
    default_storage.delete(export.path)
    export.delete()
    return result


def child(export_id):
    from collection.exporting import export_execute

    export = export_execute(export_id)
    print(f"  child: export {export.pk} {export.status} in-process max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--format", default="openai", choices=["baize", "openai", "sharegpt", "hf"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--keep", action="store_true", help="Keep the generated rows for the next run.")
    parser.add_argument("--repeat", type=int, default=1, help="Interleaved repeats; the best of each is reported.")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if not settings.IS_POSTGRES:
        raise SystemExit("Set DATABASE_URL to a Postgres database: the comparison is against psql COPY.")
    call_command("migrate", verbosity=0)
    facts = machine_facts()
    print(json.dumps({"machine": facts}, indent=1))
    seed_set = build_rows(args.n)
    variants = list(args.variants)
    results = {"n": args.n, "format": args.format, "repeat": args.repeat, "machine": facts}
    # Interleaved repeats, best of each: on a shared machine the minimum is the least disturbed run.
    runs = {name: [] for name in ["copy"] + variants}
    for attempt in range(args.repeat):
        with tempfile.TemporaryDirectory() as folder:
            runs["copy"].append(time_copy(seed_set, Path(folder)))
        print(f"[{attempt + 1}] psql COPY: {runs['copy'][-1]['rows']} rows, "
              f"{runs['copy'][-1]['bytes'] / 1e6:.1f} MB in {runs['copy'][-1]['seconds']} s", flush=True)
        for name in variants:
            result = time_export(seed_set, args.format, VARIANTS[name])
            runs[name].append(result)
            print(f"[{attempt + 1}] export {args.format} [{name}]: {result['written']} dialogues, "
                  f"{result['bytes'] / 1e6:.1f} MB in {result['seconds']} s; peak RSS {result['peak_rss_mb']} MB; "
                  f"phases {result['counts'].get('seconds')}", flush=True)
    results["copy"] = min(runs["copy"], key=lambda r: r["seconds"])
    print(f"best psql COPY: {results['copy']['seconds']} s")
    for name in variants:
        best = min(runs[name], key=lambda r: r["seconds"])
        best["ratio_to_copy"] = round(best["seconds"] / max(results["copy"]["seconds"], 1e-9), 2)
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs[name])
        results[name] = best
        print(f"best export {args.format} [{name}]: {best['seconds']} s = {best['ratio_to_copy']}x COPY; "
              f"peak RSS (max over runs) {best['peak_rss_mb']} MB")
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if not args.keep:
        delete_rows(seed_set)
        seed_set.delete()
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
