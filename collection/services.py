"""Generation run lifecycle: start, pause, resume, cancel, retry failed seeds, raise the budget, and progress.

What a user gets: the same operations behind the runs pages, the API and `manage.py selfchat`. Every write is one
transaction and enqueues the driver (collection.drive_generation_run) only once it has committed; the run row
is the truth, so pressing a button twice, or two people pressing it, does no harm.
"""
import json
import random
import threading
import time
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import F
from django.utils import timezone

from baize_eval.llm.models import Endpoint, ModelPrice
from collection.models import FINISHED, GenerationItem, GenerationRun, JobStatus, Seed

ITEM_BATCH = 5000
KNOWN_PARAMS = {"temperature": float, "top_p": float, "max_tokens": int, "presence_penalty": float,
                "frequency_penalty": float, "seed": int}


class RunSpecError(ValueError):
    """A run cannot start as asked; the message names the field."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


def enqueue_drive(run_id):
    """The driver task, once the current transaction commits. Embedded mode (tasks run in-process, no worker):
    the driver runs in a background thread of this process instead, so a page that starts a run returns at once
    and shows its progress; `wait_for_local_drivers` lets a command wait for it."""
    from baize_eval.celery import app
    from collection.tasks import drive_generation_run

    if app.conf.task_always_eager:
        transaction.on_commit(lambda: _start_local_driver(run_id))
    else:
        transaction.on_commit(lambda: drive_generation_run.delay(run_id))


_local_drivers = []


def _start_local_driver(run_id):
    from collection.selfchat import drive_generation_run

    def drive():
        try:
            drive_generation_run(run_id=run_id)
        finally:
            connections.close_all()

    thread = threading.Thread(target=drive, name=f"run-{run_id}", daemon=True)
    _local_drivers.append(thread)
    thread.start()


def wait_for_local_drivers():
    """Embedded mode: block until the runs this process drives in the background are done."""
    while _local_drivers:
        _local_drivers.pop().join()


def clean_params(params):
    """Sampling parameters as a JSON object; the common ones type-checked (others pass through to the server)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RunSpecError("params", "must be a JSON object such as {\"temperature\": 0.7, \"max_tokens\": 512}")
    clean = {}
    for key, value in params.items():
        kind = KNOWN_PARAMS.get(key)
        if kind is not None:
            try:
                if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
                    raise ValueError
                value = kind(value)
            except (TypeError, ValueError):
                raise RunSpecError("params", f"{key} must be a {'whole number' if kind is int else 'number'}") from None
        if "\\u0000" in json.dumps([key, value]):  # Postgres JSON cannot hold NUL
            raise RunSpecError("params", f"{key} contains a NUL character")
        clean[str(key)] = value
    return clean


def generation_run_start(*, seed_set, endpoint, model, template, mode=None, params=None, max_turns=4,
                         concurrency=8, budget_usd=None, budget_tokens=None, sample_size=None, sample_seed=0,
                         language="en", min_turns=2, name="", created_by=None):
    """A queued generation run over the seed set (or a deterministic sample of it): one item per seed, and the
    driver enqueued once the run is committed. Raises RunSpecError naming the field that is wrong."""
    mode = mode or template.mode
    if mode not in GenerationRun.Mode.values:
        raise RunSpecError("mode", f"{mode!r} is not one of {', '.join(GenerationRun.Mode.values)}")
    if template.mode != mode:
        raise RunSpecError("template", f"{template} is a {template.mode} template, not a {mode} one")
    needed = ["{topic}"] + (["{transcript}"] if mode == GenerationRun.Mode.TURNS else [])
    missing = [placeholder for placeholder in needed if placeholder not in template.prompt]
    if missing:
        raise RunSpecError("template", f"the prompt of {template} has no {' or '.join(missing)} placeholder")
    if not str(model or "").strip():
        raise RunSpecError("model", "is required")
    if not 1 <= int(max_turns) <= 50:
        raise RunSpecError("max_turns", "must be between 1 and 50")
    if not 1 <= int(concurrency) <= 512:
        raise RunSpecError("concurrency", "must be between 1 and 512")
    if budget_usd is not None:
        try:
            budget_usd = Decimal(str(budget_usd))
        except InvalidOperation:
            raise RunSpecError("budget_usd", "must be a number") from None
        if budget_usd < 0:
            raise RunSpecError("budget_usd", "must not be negative")
    if budget_tokens is not None and int(budget_tokens) < 0:
        raise RunSpecError("budget_tokens", "must not be negative")
    if sample_size is not None and int(sample_size) < 1:
        raise RunSpecError("sample_size", "must be at least 1")
    params = clean_params(params)

    with transaction.atomic():
        run = GenerationRun.objects.create(
            name=name, seed_set=seed_set, endpoint=endpoint, model=model.strip(), template=template, mode=mode,
            params=params, max_turns=max_turns, concurrency=concurrency, budget_usd=budget_usd,
            budget_tokens=budget_tokens, sample_size=sample_size, sample_seed=sample_seed, language=language,
            min_turns=min_turns, created_by=created_by, status=JobStatus.QUEUED, heartbeat_at=timezone.now(),
        )
        total = _create_items(run, sample_size=sample_size, sample_seed=sample_seed)
        if not total:
            raise RunSpecError("seed_set", f"{seed_set.name!r} has no seeds")
        GenerationRun.objects.filter(pk=run.pk).update(items_total=total)
        run.items_total = total
        enqueue_drive(run.pk)
    return run


def _create_items(run, *, sample_size, sample_seed):
    seeds = Seed.objects.filter(seed_set_id=run.seed_set_id)
    if sample_size is None:
        # Every seed: one INSERT ... SELECT in the database, fast for a million seeds.
        table = GenerationItem._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (run_id, seed_id, status, attempts, error, updated_at) "
                f"SELECT %s, id, %s, 0, '', %s FROM {Seed._meta.db_table} WHERE seed_set_id = %s ORDER BY id",
                [run.pk, GenerationItem.Status.PENDING, connection.ops.adapt_datetimefield_value(timezone.now()),
                 run.seed_set_id],
            )
            return cursor.rowcount
    # A sample: the same sample_seed on the same seeds picks the same seeds.
    ids = list(seeds.order_by("id").values_list("id", flat=True))
    chosen = sorted(random.Random(sample_seed).sample(ids, min(sample_size, len(ids))))
    for start in range(0, len(chosen), ITEM_BATCH):
        GenerationItem.objects.bulk_create(
            GenerationItem(run=run, seed_id=seed_id) for seed_id in chosen[start:start + ITEM_BATCH]
        )
    return len(chosen)


def generation_run_pause(*, run):
    """Stop dispatching new seeds; requests in flight finish. True if the run was queued or running."""
    return bool(GenerationRun.objects.filter(pk=run.pk, status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
                .update(status=JobStatus.PAUSED))


def generation_run_resume(*, run):
    """Queue a paused run again; the driver picks up its pending seeds."""
    with transaction.atomic():
        resumed = GenerationRun.objects.filter(pk=run.pk, status=JobStatus.PAUSED).update(
            status=JobStatus.QUEUED, heartbeat_at=timezone.now(), driver_token=None,
        )
        if resumed:
            enqueue_drive(run.pk)
    return bool(resumed)


def generation_run_cancel(*, run):
    """Cancel for good: nothing new is sent; requests in flight finish and their dialogues are kept."""
    now = timezone.now()
    return bool(GenerationRun.objects.filter(pk=run.pk).exclude(status__in=FINISHED)
                .update(status=JobStatus.CANCELLED, finished_at=now))


def generation_run_retry_failed(*, run):
    """Put the failed seeds back to pending and queue the run again if it had finished. Returns how many."""
    with transaction.atomic():
        # Same lock as the driver's finish step: a finishing driver either sees these seeds or has finished.
        locked = GenerationRun.objects.select_for_update().get(pk=run.pk)
        if locked.status == JobStatus.CANCELLED:
            return 0
        count = GenerationItem.objects.filter(run_id=run.pk, status=GenerationItem.Status.FAILED).update(
            status=GenerationItem.Status.PENDING, error="", lease_token=None, lease_expires_at=None,
        )
        if not count:
            return 0
        GenerationRun.objects.filter(pk=run.pk).update(failed=F("failed") - count)
        if locked.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            _requeue(run.pk)
    return count


def generation_run_set_budget(*, run, budget_usd=None, budget_tokens=None):
    """Change the budget; a run that stopped on its budget is queued again when seeds are left to do."""
    with transaction.atomic():
        locked = GenerationRun.objects.select_for_update().get(pk=run.pk)
        GenerationRun.objects.filter(pk=run.pk).update(budget_usd=budget_usd, budget_tokens=budget_tokens)
        locked.budget_usd, locked.budget_tokens = budget_usd, budget_tokens
        pending = GenerationItem.objects.filter(run_id=run.pk, status=GenerationItem.Status.PENDING).exists()
        if locked.status == JobStatus.SUCCEEDED and locked.budget_exhausted and pending and not locked.budget_reached():
            _requeue(run.pk)
            return True
    return False


def _requeue(run_id):
    GenerationRun.objects.filter(pk=run_id).update(
        status=JobStatus.QUEUED, finished_at=None, error="", budget_exhausted=False, heartbeat_at=timezone.now(),
        driver_token=None,
    )
    enqueue_drive(run_id)


def generation_run_progress(run):
    """Live progress from the run row (counters) and the in-flight items: done, failed, in flight, pending, tokens,
    cost (and how many calls had estimated usage), rate (seeds/s), ETA (s), filter counts. Cheap enough to poll
    every 2 s on a million-seed run."""
    from collection import filters

    run.refresh_from_db()
    in_flight = GenerationItem.objects.filter(run_id=run.pk, status=GenerationItem.Status.IN_FLIGHT).count()
    settled = run.done + run.failed
    pending = max(run.items_total - settled - in_flight, 0)
    now = timezone.now()
    elapsed = ((run.finished_at or now) - run.started_at).total_seconds() if run.started_at else 0.0
    rate = settled / elapsed if elapsed > 0 else 0.0
    eta = None
    if run.status == JobStatus.RUNNING and rate > 0:
        eta = round((pending + in_flight) / rate, 1)
    return {
        "id": run.pk, "status": run.status, "is_finished": run.is_finished, "error": run.error,
        "total": run.items_total, "done": run.done, "failed": run.failed, "in_flight": in_flight,
        "pending": pending, "calls": run.calls, "estimated_calls": run.estimated_calls,
        "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens, "tokens": run.total_tokens,
        "cost_usd": format(run.cost_usd, "f"),
        "budget_usd": format(run.budget_usd, "f") if run.budget_usd is not None else None,
        "budget_tokens": run.budget_tokens, "budget_exhausted": run.budget_exhausted,
        "rate_per_s": round(rate, 3), "eta_seconds": eta, "elapsed_seconds": round(elapsed, 1),
        "priced": ModelPrice.objects.filter(model=run.model).exists(),
        "filters": filters.filter_counts(run.dialogues.all()),
        "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
    }


def generation_run_failed_items(run, *, limit=200):
    """The failed seeds of a run with their errors, for the run page and the API."""
    return list(GenerationItem.objects.filter(run_id=run.pk, status=GenerationItem.Status.FAILED)
                .select_related("seed").order_by("id")[:limit])


def endpoint_for_base_url(base_url, *, api_key_env="OPENAI_API_KEY"):
    """The endpoint with this base URL, created (named after its host and port) when there is none."""
    from urllib.parse import urlparse

    base_url = base_url.rstrip("/")
    endpoint = Endpoint.objects.filter(base_url=base_url).order_by("id").first()
    if endpoint:
        return endpoint
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise RunSpecError("base_url", f"{base_url!r} is not an http(s) URL")
    name = parsed.netloc
    if Endpoint.objects.filter(name=name).exists():
        name = f"{parsed.netloc}{parsed.path}"[:100]
    if Endpoint.objects.filter(name=name).exists():
        name = f"{name[:80]}-{int(time.time())}"
    return Endpoint.objects.create(name=name, base_url=base_url, api_key_env=api_key_env)


def stale_runs_recover(*, now=None):
    """Runs whose driver went silent (a killed worker) go back to the queue and their leased seeds back to
    pending; queued runs whose message was lost are enqueued again. Returns (requeued run ids, seconds until every
    run running now would be stale if its driver is dead, or None when none is running)."""
    now = now or timezone.now()
    stale_after = settings.JOB_STALE_SECONDS
    cutoff = now - timezone.timedelta(seconds=stale_after)
    requeued = []
    stale = list(GenerationRun.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
                 .values_list("pk", flat=True))
    for run_id in stale:
        with transaction.atomic():
            if GenerationRun.objects.filter(pk=run_id, status=JobStatus.RUNNING, heartbeat_at__lt=cutoff).update(
                    status=JobStatus.QUEUED, driver_token=None, heartbeat_at=now):
                requeued.append(run_id)
                enqueue_drive(run_id)
    # Leases that nobody renewed: back to pending, for whichever driver comes next.
    GenerationItem.objects.filter(status=GenerationItem.Status.IN_FLIGHT, lease_expires_at__lt=now).update(
        status=GenerationItem.Status.PENDING, lease_token=None, lease_expires_at=None,
    )
    # Queued for a whole stale period without a driver: the task message was lost (a worker died holding it).
    lost = list(GenerationRun.objects.filter(status=JobStatus.QUEUED, heartbeat_at__lt=cutoff)
                .values_list("pk", flat=True))
    for run_id in lost:
        with transaction.atomic():
            if GenerationRun.objects.filter(pk=run_id, status=JobStatus.QUEUED, heartbeat_at__lt=cutoff).update(
                    heartbeat_at=now):
                requeued.append(run_id)
                enqueue_drive(run_id)
    newest = (GenerationRun.objects.filter(status=JobStatus.RUNNING).order_by("-heartbeat_at")
              .values_list("heartbeat_at", flat=True).first())
    all_stale_in = None
    if newest is not None:
        all_stale_in = max((newest - cutoff).total_seconds(), 0.0) + 0.5
    return requeued, all_stale_in
