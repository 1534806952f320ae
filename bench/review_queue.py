"""Review queue at scale: builds N dialogues (default 1,000,000) in Postgres with INSERT … SELECT generate_series,
then times the review pages through Django's test client. Target: no page over 300 ms.

    .venv/bin/python bench/review_queue.py [--n 1000000] [--repeat 5] [--database-url postgres://…/baize_bench_review]
                                           [--rebuild]

The database (default baize_bench_review on 127.0.0.1) is created and migrated when missing, and the rows are
reused between runs while their count matches --n. Prints, per page: the median and worst of --repeat timed
requests (after one warm-up), the number of SQL queries, and the slowest query; then the machine facts.
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Real words first (the most frequent), then pseudo-words: picked with a Zipf-like skew so a search for "water"
# matches about a third of the dialogues, "garden" a few percent, and most words almost none, as in real text.
REAL_WORDS = (
    "water use time help like good work make need way people plant day data code sun light food health money "
    "garden soil root grow leaf tomato python error server learn study travel music cook recipe doctor coffee "
    "basil compost prune harvest fertilizer pot window function loop list string database index query cache "
    "memory thread async sleep diet exercise heart blood pressure vitamin symptom fever pain muscle bone skin "
    "allergy train flight hotel visa passport city museum beach mountain river lake winter summer map ticket "
    "budget bank loan credit interest tax salary invest stock bond fund saving account insurance mortgage rent "
    "price guitar piano song rhythm chord melody band concert album film movie story novel poem author chapter "
    "exam school teacher student math physics chemistry biology history language grammar essay car engine tire "
    "brake battery fuel electric repair oil road traffic bike bus station route bread flour sugar salt oven pan "
    "boil bake fry rice pasta cheese egg milk tea soup salad dog cat bird fish pet vet leash cage tank bowl fur"
).split()
SYLLABLES = "ba ko lu mi ne sa ti vo re da fu gi ha jo pe qui ro su ta we".split()
VOCABULARY = REAL_WORDS + [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES[:8]]
RULES = ["malformed", "too_few_turns", "truncated", "refusal", "wrong_language", "near_duplicate", "echoes_seed"]
SENTENCES = 20000


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="dialogues to build (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per page after one warm-up")
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/baize_bench_review"))
    parser.add_argument("--rebuild", action="store_true", help="rebuild the rows even when the count matches")
    return parser.parse_args()


def configure(database_url):
    # Production-like settings: DEBUG off (no query log overhead, real template caching).
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/5")  # not used unless a bulk task starts
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 60)
    os.environ["ALLOWED_HOSTS"] = "localhost"
    os.environ["SECURE_SSL_REDIRECT"] = "false"
    os.environ["LOG_LEVEL"] = "ERROR"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baize_eval.settings")


def ensure_database(database_url):
    import psycopg

    name = database_url.rsplit("/", 1)[1].split("?")[0]
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def build(n):
    """N dialogues over 10 seed sets and 4 runs, ~14% flagged, 30% decided with one review event each."""
    from django.contrib.auth.models import Group, User
    from django.db import connection

    from baize_eval.llm.models import Endpoint
    from collection.models import Dialogue, GenerationRun, SeedSet
    from collection.templates_default import latest_template

    started = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute("TRUNCATE collection_reviewevent, collection_dialogueflag, collection_dialogue, "
                    "collection_generationitem, collection_generationrun, collection_seed, collection_seedset "
                    "RESTART IDENTITY CASCADE")
    group = Group.objects.get_or_create(name="reviewer")[0]
    people = []
    for name in ("bench", "ana", "ben", "cho", "dev", "eli"):
        user = User.objects.get_or_create(username=name)[0]
        user.groups.add(group)
        people.append(user.pk)
    sets = [SeedSet.objects.create(name=f"bench-{i}", source="bench", reviews_required=2 if i == 9 else 1).pk
            for i in range(10)]
    endpoint = Endpoint.objects.get_or_create(name="bench", defaults={"base_url": "http://127.0.0.1:9/v1"})[0]
    template = latest_template("transcript")
    runs = [GenerationRun.objects.create(seed_set_id=sets[i], endpoint=endpoint, model="gpt-4o-mini",
                                         template=template, status="succeeded").pk for i in range(4)]

    # Every NOT NULL column gets a value: the model's default unless computed below, so new fields don't break this.
    computed = {
        "seed_set_id": "(%(sets)s::bigint[])[1 + s.g %% 10]",
        "run_id": "CASE WHEN s.g %% 2 = 0 THEN (%(runs)s::bigint[])[1 + s.g %% 4] END",
        "topic": "x.topic",
        "original_turns": "x.turns",
        "turns": "x.turns",
        "raw_output": "x.doc",
        "num_turns": "s.nt",
        "length_chars": "x.len",
        "search_document": "x.topic || E'\\n' || x.doc",
        "status": "CASE WHEN s.g %% 50 = 9 THEN 'disputed' WHEN s.g %% 10 = 9 THEN 'rejected' "
                  "WHEN s.g %% 10 IN (7, 8) THEN 'approved' ELSE 'undecided' END",
        "version": "CASE WHEN s.g %% 10 >= 7 THEN 2 ELSE 1 END",
        "is_flagged": "(s.g %% 7 = 0)",
        "finish_reason": "CASE WHEN s.g %% 7 = 0 AND s.g %% 3 = 0 THEN 'length' ELSE 'stop' END",
        "generation": "%(generation)s::jsonb",
        "created_at": "now() - make_interval(secs => (%(n)s - s.g))",
        "updated_at": "now()",
        "language": "'en'",
        "source": "'generated'",
    }
    columns, values, params = [], [], {
        "sets": sets, "runs": runs, "n": n,
        "generation": '{"model": "gpt-4o-mini", "params": {"temperature": 0.7, "max_tokens": 1024}, '
                      '"template": {"name": "baize-transcript", "version": 1}, "calls": [{"purpose": "transcript", '
                      '"usage": {"prompt_tokens": 180, "completion_tokens": 420}, "latency_ms": 2310, '
                      '"finish_reason": "stop"}]}',
    }
    for field in Dialogue._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(f'"{field.column}"')
        if field.attname in computed:
            values.append(computed[field.attname])
        elif field.null:
            values.append("NULL")
        else:
            key = f"default_{field.attname}"
            params[key] = field.get_db_prep_save(field.get_default(), connection)
            values.append(f"%({key})s")

    with connection.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '512MB'")
        cur.execute("DROP INDEX IF EXISTS collection_dialogue_search_gin")
        cur.execute("DROP TABLE IF EXISTS bench_sentence")
        cur.execute(
            "CREATE UNLOGGED TABLE bench_sentence AS SELECT i AS id, "
            "array_to_string(ARRAY(SELECT (%(vocab)s::text[])[1 + floor(%(vlen)s * power("
            "((i * 7919 + k * 104729 + k * k * 31) %% 100003) / 100003.0, 1.5))::int] "
            "FROM generate_series(1, 6 + i %% 19) k), ' ') AS text FROM generate_series(0, %(count)s - 1) i",
            {"vocab": VOCABULARY, "vlen": len(VOCABULARY), "count": SENTENCES},
        )
        cur.execute("CREATE UNIQUE INDEX ON bench_sentence (id)")
        cur.execute(
            f"INSERT INTO collection_dialogue ({', '.join(columns)}) SELECT {', '.join(values)} "
            "FROM (SELECT g, 2 + (g * 13) %% 7 AS nt FROM generate_series(1, %(n)s) g) s "
            "CROSS JOIN LATERAL (SELECT "
            "  (SELECT text FROM bench_sentence WHERE id = (s.g * 17) %% " + str(SENTENCES) + ") AS topic, "
            "  jsonb_agg(jsonb_build_object('role', CASE WHEN t %% 2 = 0 THEN 'human' ELSE 'ai' END, 'text', b.text) "
            "            ORDER BY t) AS turns, "
            "  sum(length(b.text))::int AS len, string_agg(b.text, E'\\n' ORDER BY t) AS doc "
            "  FROM generate_series(0, s.nt - 1) t "
            "  JOIN bench_sentence b ON b.id = (s.g * 31 + t * 977) %% " + str(SENTENCES) + ") x",
            params,
        )
        inserted = time.perf_counter()
        cur.execute(
            "INSERT INTO collection_dialogueflag (dialogue_id, rule, reason) "
            "SELECT id, (%(rules)s::text[])[1 + (id / 7) %% 7], 'bench flag' FROM collection_dialogue WHERE is_flagged "
            "UNION ALL SELECT id, 'truncated', 'finish_reason=length' FROM collection_dialogue "
            "WHERE is_flagged AND finish_reason = 'length' AND (id / 7) %% 7 <> 2",
            {"rules": RULES},
        )
        cur.execute(
            "INSERT INTO collection_reviewevent (dialogue_id, actor_id, action, created_at, before, after, reasons, "
            "note, version) SELECT id, (%(people)s::int[])[1 + id %% 6], "
            "CASE WHEN status = 'approved' THEN 'approve' ELSE 'reject' END, now() - make_interval(mins => (id %% 43200)::int), "
            "'{\"status\": \"undecided\"}'::jsonb, jsonb_build_object('status', status), "
            "CASE WHEN status = 'approved' THEN '[]'::jsonb ELSE '[\"off-topic\"]'::jsonb END, '', 2 "
            "FROM collection_dialogue WHERE status <> 'undecided'",
            {"people": people},
        )
        cur.execute("DROP TABLE bench_sentence")
        # search_vector was filled by the migration's trigger on insert; the GIN index is built once, at the end.
        cur.execute("CREATE INDEX collection_dialogue_search_gin ON collection_dialogue USING GIN (search_vector)")
    connection.ensure_connection()
    old_autocommit = connection.get_autocommit()
    connection.set_autocommit(True)
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE collection_dialogue")
        cur.execute("VACUUM ANALYZE collection_dialogueflag")
        cur.execute("VACUUM ANALYZE collection_reviewevent")
    connection.set_autocommit(old_autocommit)
    print(f"built {n:,} dialogues in {time.perf_counter() - started:.1f} s "
          f"(rows {inserted - started:.1f} s, flags/events/indexes/vacuum {time.perf_counter() - inserted:.1f} s)")


def time_pages(repeat):
    from django.contrib.auth.models import User
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client

    from collection.models import Dialogue, SeedSet

    user = User.objects.get(username="bench")
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    sets = list(SeedSet.objects.order_by("id").values_list("id", flat=True))
    undecided = Dialogue.objects.filter(status="undecided").order_by("id").values_list("id", flat=True)
    some = undecided[min(5000, undecided.count() // 2)]
    Dialogue.objects.filter(lease_holder=user).update(lease_holder=None, lease_expires_at=None)

    pages = [
        ("queue, no filter", "/review/"),
        ("queue, undecided", "/review/?status=undecided"),
        ("queue, seed set", f"/review/?seed_set={sets[3]}"),
        ("queue, seed set + undecided + flag rule", f"/review/?seed_set={sets[3]}&status=undecided&flag=refusal"),
        ("queue, any flag", "/review/?flag=any"),
        ("queue, flag rule", "/review/?flag=truncated"),
        ("queue, turns 6-8, length <= 1500", "/review/?min_turns=6&max_turns=8&max_length=1500"),
        ("queue, sort longest", "/review/?sort=-length"),
        ("queue, sort most turns + undecided", "/review/?sort=-turns&status=undecided"),
        ("queue, page 200", "/review/?page=200"),
        ("queue, search most common word", "/review/?q=water"),
        ("queue, search common word", "/review/?q=garden"),
        ("queue, search rare word", "/review/?q=passport"),
        ("queue, search two words", "/review/?q=basil+compost"),
        ("queue, search phrase + undecided", "/review/?q=%22python+code%22&status=undecided"),
        ("queue, search + flag rule", "/review/?q=coffee&flag=refusal"),
        ("queue, search + seed set + turns", f"/review/?q=doctor&seed_set={sets[5]}&min_turns=4"),
        ("dialogue page", f"/review/{some}/"),
        ("dialogue page, filtered", f"/review/{some}/?status=undecided&flag=none&q=water"),
        ("disagreements", "/review/disagreements/"),
        ("bulk confirmation, seed set + flag", f"/review/bulk/?action=approve&seed_set={sets[2]}&flag=refusal"),
        ("bulk confirmation, common word", "/review/bulk/?action=approve&q=garden"),
    ]
    results = []

    def measure(label, make_request, expect):
        times, queries = [], []

        def record(execute, sql, params, many, context):
            start = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                queries.append({"time": time.perf_counter() - start, "sql": sql})

        cache.clear()
        make_request()  # warm-up
        cache.clear()
        # Django's own query log is reset at each request start; a wrapper sees every query of the request.
        with connection.execute_wrapper(record):
            response = make_request()
        assert response.status_code == expect, (label, response.status_code)
        for _ in range(repeat):
            cache.clear()  # worst case: the per-reviewer counts are recomputed on every timed request
            start = time.perf_counter()
            response = make_request()
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == expect, (label, response.status_code)
        slowest = max(queries, key=lambda q: q["time"], default={"time": 0, "sql": ""})
        estimated = b"(approximate)" in response.content or b"(estimated:" in response.content
        counted = "≈" if estimated else "exact"
        results.append((label, statistics.median(times), max(times), len(queries), slowest["time"] * 1000,
                        slowest["sql"][:110], counted))

    for label, url in pages:
        measure(label, lambda url=url: client.get(url), 200)

    # "Review next": lease the next undecided dialogue of a filter (SKIP LOCKED) and redirect to it.
    measure("next (lease), no filter", lambda: client.get("/review/next/"), 302)
    measure("next (lease), seed set + flag rule", lambda: client.get(f"/review/next/?seed_set={sets[1]}&flag=refusal"), 302)
    measure("next (lease), search", lambda: client.get("/review/next/?q=coffee"), 302)

    # Approve: version-checked write + event, then the redirect to the next undecided of the filter.
    def approve():
        target = Dialogue.objects.filter(status="undecided", seed_set_id=sets[0]).order_by("-id").values_list(
            "id", "version").first()
        return client.post(f"/review/{target[0]}/approve/", {"version": target[1], "seed_set": sets[0]})
    measure("approve (POST)", approve, 302)

    width = max(len(r[0]) for r in results)
    print(f"\n{'page':<{width}}  {'median ms':>9}  {'worst ms':>8}  {'queries':>7}  {'slowest query ms':>16}  counts")
    for label, median, worst, count, slow_ms, sql, counted in results:
        flag = "  OVER 300 ms" if worst > 300 else ""
        print(f"{label:<{width}}  {median:9.1f}  {worst:8.1f}  {count:7d}  {slow_ms:16.1f}  {counted:>6}{flag}")
    print("counts: exact, or ≈ (planner estimates shown labeled approximate: huge selections or over the time budget)")
    print(f"\nworst page: {max(r[2] for r in results):.1f} ms (target: every page under 300 ms)")
    slowest = max(results, key=lambda r: r[4])
    print(f"slowest single query ({slowest[0]}, {slowest[4]:.1f} ms): {slowest[5]}…")
    return results


def machine_facts():
    from django.db import connection

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
        cur.execute("SELECT pg_size_pretty(pg_total_relation_size('collection_dialogue'))")
        size = cur.fetchone()[0]
        cur.execute("SHOW shared_buffers")
        buffers = cur.fetchone()[0]
    print(f"\nmachine: {os.cpu_count()} CPUs ({cpu}), {mem} RAM, load average {os.getloadavg()}, "
          f"Python {platform.python_version()}, PostgreSQL {pg} (shared_buffers {buffers}), "
          f"collection_dialogue {size} with indexes")


def main():
    args = parse_args()
    configure(args.database_url)
    ensure_database(args.database_url)
    import django

    django.setup()
    from django.core.management import call_command

    from collection.models import Dialogue

    call_command("migrate", verbosity=0)
    count = Dialogue.objects.count()
    if args.rebuild or count != args.n:
        print(f"building {args.n:,} dialogues (found {count:,})…")
        build(args.n)
    else:
        print(f"reusing {count:,} dialogues in {args.database_url.rsplit('/', 1)[1]}")
    time_pages(args.repeat)
    machine_facts()


if __name__ == "__main__":
    main()
