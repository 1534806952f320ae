"""Self-chat throughput: a generation run through a real Celery worker on Redis and Postgres, against a local
OpenAI-protocol server that answers each request after 500 ms; and the Baize-style sequential baseline.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/baize_bench CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/selfchat_throughput.py [--n 2000] [--concurrency 64] [--latency 0.5] [--baseline-n 5]

Target (issue 2): 2,000 seeds, transcript mode, concurrency 64 finish within 1.25x the ideal
(2000 x 0.5 s / 64 = 15.6 s, so <= 19.5 s). Measured from the driver's claim (run.started_at) to the run's
finished_at, and also from the enqueue (wall clock, includes the worker picking the task up).

Baseline: Baize's collect.py loop, one request at a time then a 1 s sleep, parsing each transcript; measured on
--baseline-n seeds against the same server and extrapolated to --n (said so in the output).

The database must be migrated. The benchmark's rows (seed set, run, dialogues, ledger) are deleted at the end
unless --keep. Start a worker yourself and pass --no-worker to measure that one instead of a fresh one.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baize_eval.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from baize_eval.llm.models import Call, Endpoint, ModelPrice  # noqa: E402
from collection.models import Dialogue, GenerationRun, Seed, SeedSet, normalize_seed_text, seed_hash  # noqa: E402
from collection.parsing import parse_transcript  # noqa: E402
from collection.services import generation_run_start  # noqa: E402
from collection.templates_default import latest_template  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402


def machine_facts():
    facts = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    facts["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        facts["postgres"] = cursor.fetchone()[0]
    try:
        import redis

        facts["redis"] = redis.Redis.from_url(settings.CELERY_BROKER_URL).info()["redis_version"]
    except Exception as exc:  # noqa: BLE001 - facts are informative only
        facts["redis"] = f"? ({exc})"
    return facts


def start_worker(log_path, concurrency):
    env = dict(os.environ, PYTHONUNBUFFERED="1", LOG_LEVEL="WARNING")
    name = f"bench-{uuid.uuid4().hex[:6]}@%h"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "baize_eval", "worker", "-Q", "generation,default", "--pool",
         "threads", "--concurrency", str(concurrency), "-n", name, "--without-heartbeat", "--without-mingle",
         "--without-gossip", "-l", "info"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while b" ready." not in Path(log_path).read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.1)
    return process


def cpu_seconds(pid):
    """user + system CPU seconds a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline(server, n):
    """Baize's collect.py, in spirit: sequential, then sleep 1 s; no retries, no database."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    template = latest_template("transcript")
    started = time.perf_counter()
    for i in range(n):
        prompt = template.prompt.replace("{topic}", f"Baseline question number {i}?")
        completion = client.chat.completions.create(model="fake-model",
                                                    messages=[{"role": "user", "content": prompt}])
        parse_transcript(completion.choices[0].message.content)
        time.sleep(1)
    return time.perf_counter() - started


def cleanup(seed_set, endpoint, runs):
    Dialogue.objects.filter(run__in=runs).delete()
    Call.objects.filter(job_kind="generation_run", job_id__in=[r.pk for r in runs]).delete()
    GenerationRun.objects.filter(pk__in=[r.pk for r in runs]).delete()
    Seed.objects.filter(seed_set=seed_set).delete()
    seed_set.delete()
    endpoint.delete()


def main():
    parser = argparse.ArgumentParser(description="Self-chat generation throughput against a 500 ms fake server.")
    parser.add_argument("--n", type=int, default=2000, help="seeds")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the server takes per request")
    parser.add_argument("--mode", choices=["transcript", "turns"], default="transcript")
    parser.add_argument("--baseline-n", type=int, default=5, help="seeds for the sequential baseline (0: skip)")
    parser.add_argument("--no-worker", action="store_true", help="use an already running worker")
    parser.add_argument("--worker-threads", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the rows written")
    args = parser.parse_args()
    if not settings.IS_POSTGRES or settings.CELERY_TASK_ALWAYS_EAGER:
        raise SystemExit("Set DATABASE_URL (Postgres) and CELERY_BROKER_URL (Redis): the target is about a real worker.")

    print("machine:", machine_facts())
    server = FakeOpenAI(latency=args.latency).start()
    tag = uuid.uuid4().hex[:8]
    seed_set = SeedSet.objects.create(name=f"bench-{tag}", source="bench")
    texts = [normalize_seed_text(f"Bench question {i} {tag}: how does topic {i} work?") for i in range(args.n)]
    Seed.objects.bulk_create((Seed(seed_set=seed_set, text=t, text_hash=seed_hash(t)) for t in texts), batch_size=5000)
    endpoint = Endpoint.objects.create(name=f"bench-{tag}", base_url=server.base_url, api_key_env="")
    ModelPrice.objects.get_or_create(model="fake-model", defaults={"prompt_usd_per_mtok": "0.15",
                                                                   "completion_usd_per_mtok": "0.60"})
    worker = None
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if not args.no_worker:
                worker = start_worker(Path(tmp) / "worker.log", args.worker_threads)
            worker_cpu = cpu_seconds(worker.pid) if worker else None
            own_cpu = time.process_time()
            enqueued = time.perf_counter()
            run = generation_run_start(seed_set=seed_set, endpoint=endpoint, model="fake-model",
                                       template=latest_template(args.mode), mode=args.mode,
                                       concurrency=args.concurrency, max_turns=2)
            runs.append(run)
            while True:
                run.refresh_from_db()
                if run.is_finished:
                    break
                time.sleep(0.05)
            wall = time.perf_counter() - enqueued
            own_cpu = time.process_time() - own_cpu
            if worker:
                worker_cpu = cpu_seconds(worker.pid) - worker_cpu
            driven = (run.finished_at - run.started_at).total_seconds()
            calls_per_seed = 1 if args.mode == "transcript" else 2 * 2 + 1
            ideal = args.n * calls_per_seed * args.latency / args.concurrency
            print(f"run {run.pk}: status={run.status} done={run.done} failed={run.failed} calls={run.calls} "
                  f"tokens={run.total_tokens} cost=${run.cost_usd}")
            print(f"server: {len(server.ledger)} responses, at most {server.max_in_flight} in flight")
            print(f"ideal ({args.n} x {calls_per_seed} x {args.latency}s / {args.concurrency}): {ideal:.1f} s;"
                  f" target <= {1.25 * ideal:.1f} s")
            print(f"driver (claim -> finished): {driven:.1f} s = {driven / ideal:.2f}x ideal, "
                  f"{run.done / driven:.0f} seeds/s")
            print(f"wall (enqueue -> finished):  {wall:.1f} s = {wall / ideal:.2f}x ideal")
            print(f"CPU: worker {worker_cpu if worker_cpu is not None else float('nan'):.1f} s, "
                  f"this process (fake server + polling) {own_cpu:.1f} s")
            if args.baseline_n:
                server.latency = args.latency
                seconds = baseline(server, args.baseline_n)
                per_seed = seconds / args.baseline_n
                print(f"baseline (sequential + 1 s sleep): {args.baseline_n} seeds in {seconds:.1f} s = "
                      f"{per_seed:.2f} s/seed; extrapolated to {args.n} seeds: {per_seed * args.n:.0f} s "
                      f"({per_seed * args.n / max(driven, 1e-9):.0f}x slower than the run)")
            print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(30)
            server.stop()
            if not args.keep:
                cleanup(seed_set, endpoint, runs)


if __name__ == "__main__":
    main()
