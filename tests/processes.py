"""Real processes for integration tests: a Celery worker on Redis against the test database, and the fake
OpenAI server. Use them in a test module with

    from tests.processes import celery_worker, fake_openai, start_worker  # noqa: F401 (fixtures)

and mark tests that start a worker with @pytest.mark.worker. The worker is a separate process, so a test that uses
it must commit its data: ask for `transactional_db` (the celery_worker fixture does).

    def test_it_...(celery_worker, fake_openai):
        ...                                  # data committed, worker consuming `generation` and `default`
        celery_worker.kill()                 # SIGKILL, as a crash would
        start_worker()                       # another one (the start_worker fixture stops it at teardown)
"""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
QUEUES = ("generation", "default")
# Short heartbeats and leases, so a killed worker's run is picked up again within seconds.
WORKER_ENV = {"JOB_HEARTBEAT_SECONDS": "0.5", "JOB_STALE_SECONDS": "3", "LOG_LEVEL": "INFO"}


def test_database_url():
    """The URL of pytest-django's test database (test_<name>), for processes started by the test."""
    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def purge_queues():
    """Drop messages a previous (crashed) test run left in our Redis db."""
    from baize_eval.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in QUEUES:
            try:
                channel.queue_purge(queue)
            except Exception:  # noqa: BLE001 - a queue that never existed
                pass


class Worker:
    def __init__(self, log_path, *, concurrency=4, extra_env=None):
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.log_path = Path(log_path)
        env = dict(os.environ)
        env.update(WORKER_ENV)
        env.update({"DATABASE_URL": test_database_url(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
                    "PYTHONUNBUFFERED": "1"})
        env.pop("REDIS_URL", None)
        env.update(extra_env or {})
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "baize_eval", "worker", "-Q", ",".join(QUEUES), "--pool",
             "threads", "--concurrency", str(concurrency), "-n", self.name, "--without-heartbeat",
             "--without-mingle", "--without-gossip", "-l", "info"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}:\n{self.log()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"the worker did not get ready in {timeout}s:\n{self.log()}")

    def log(self):
        return self.log_path.read_text(errors="replace")[-20000:]

    def kill(self):
        """SIGKILL: no cleanup, no acks, connections dropped, as when a machine dies."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def fake_openai():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def start_worker(transactional_db, tmp_path):
    """Start real workers (start_worker(**options) -> Worker); all are stopped at teardown."""
    purge_queues()
    workers = []

    def start(**options):
        worker = Worker(tmp_path / f"worker-{len(workers)}.log", **options)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    # The workers' connections are gone; ours are closed too so the test database can be flushed and dropped.
    connections.close_all()
    purge_queues()


@pytest.fixture
def celery_worker(start_worker):
    return start_worker()


def wait_for(predicate, *, timeout=60, interval=0.1, message="condition", on_timeout=None):
    """Poll predicate() until it is truthy; fail the test with `message` (and on_timeout() text) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    pytest.fail(f"timed out after {timeout}s waiting for {message}\n{extra}")
