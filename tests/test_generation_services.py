"""Run lifecycle services without a worker: starting (items, deterministic samples, refusals naming the field),
retrying failed seeds, raising the budget, progress numbers and stale-run recovery."""
from datetime import timedelta

import pytest
from django.utils import timezone

from collection.models import GenerationItem, GenerationRun
from collection.services import (
    RunSpecError, endpoint_for_base_url, generation_run_progress, generation_run_retry_failed,
    generation_run_set_budget, generation_run_start, stale_runs_recover,
)
from tests.factories import make_endpoint, make_seed_set, make_seeds, make_template

pytestmark = pytest.mark.django_db


@pytest.fixture
def seed_set():
    seed_set = make_seed_set("garden")
    make_seeds(seed_set, [f"Question number {i} about gardens?" for i in range(50)])
    return seed_set


def start(seed_set, **fields):
    fields.setdefault("endpoint", make_endpoint("http://127.0.0.1:9/v1", name=f"ep{GenerationRun.objects.count()}"))
    fields.setdefault("template", make_template("transcript", name=f"tpl{GenerationRun.objects.count()}"))
    return generation_run_start(seed_set=seed_set, model="fake-model", **fields)


def seeds_of(run):
    return sorted(GenerationItem.objects.filter(run=run).values_list("seed_id", flat=True))


def test_it_creates_one_pending_item_per_seed(seed_set):
    run = start(seed_set)
    assert run.status == "queued" and run.items_total == 50
    assert GenerationItem.objects.filter(run=run, status="pending").count() == 50
    assert seeds_of(run) == sorted(seed_set.seeds.values_list("id", flat=True))


def test_it_samples_the_same_seeds_for_the_same_sample_seed(seed_set):
    first, again, other = (start(seed_set, sample_size=10, sample_seed=s) for s in (3, 3, 4))
    assert first.items_total == 10 and len(seeds_of(first)) == 10
    assert seeds_of(first) == seeds_of(again)
    assert seeds_of(first) != seeds_of(other)


@pytest.mark.parametrize("fields, field", [
    ({"concurrency": 0}, "concurrency"),
    ({"max_turns": 51}, "max_turns"),
    ({"budget_usd": "-1"}, "budget_usd"),
    ({"budget_usd": "lots"}, "budget_usd"),
    ({"budget_tokens": -5}, "budget_tokens"),
    ({"sample_size": 0}, "sample_size"),
    ({"mode": "novel"}, "mode"),
    ({"mode": "turns"}, "template"),
    ({"params": {"temperature": "hot"}}, "params"),
    ({"params": {"max_tokens": 1.5}}, "params"),
    ({"params": ["temperature"]}, "params"),
    ({"params": {"stop": "a\x00b"}}, "params"),
])
def test_it_refuses_a_bad_run_naming_the_field(seed_set, fields, field):
    with pytest.raises(RunSpecError) as refusal:
        start(seed_set, **fields)
    assert refusal.value.field == field and str(refusal.value).startswith(f"{field}: ")
    assert not GenerationRun.objects.exists()


@pytest.mark.parametrize("mode, prompt, missing", [
    ("transcript", "Chat about something.", "{topic}"),
    ("turns", "Ask about {topic}.", "{transcript}"),
])
def test_it_refuses_a_template_without_its_placeholders(seed_set, mode, prompt, missing):
    template = make_template(mode, name="bare", prompt=prompt)
    with pytest.raises(RunSpecError, match=f"template: the prompt of bare v1 has no {missing}"):
        start(seed_set, template=template, mode=mode)


def test_it_refuses_an_empty_seed_set_and_leaves_nothing_behind():
    with pytest.raises(RunSpecError, match="seed_set: 'empty' has no seeds"):
        start(make_seed_set("empty"))
    assert not GenerationRun.objects.exists() and not GenerationItem.objects.exists()


def test_it_finds_or_creates_the_endpoint_for_a_base_url():
    created = endpoint_for_base_url("http://127.0.0.1:8001/v1/")
    assert created.base_url == "http://127.0.0.1:8001/v1" and created.api_key_env == "OPENAI_API_KEY"
    assert endpoint_for_base_url("http://127.0.0.1:8001/v1") == created
    with pytest.raises(RunSpecError, match="base_url"):
        endpoint_for_base_url("file:///etc/passwd")


def test_it_puts_failed_seeds_back_and_queues_a_finished_run_again(seed_set):
    run = start(seed_set, sample_size=3)
    items = list(GenerationItem.objects.filter(run=run))
    GenerationItem.objects.filter(pk=items[0].pk).update(status="failed", error="HTTP 500")
    GenerationItem.objects.filter(pk__in=[i.pk for i in items[1:]]).update(status="succeeded")
    GenerationRun.objects.filter(pk=run.pk).update(status="succeeded", failed=1, done=2, finished_at=timezone.now())
    assert generation_run_retry_failed(run=run) == 1
    run.refresh_from_db()
    assert (run.status, run.failed, run.finished_at) == ("queued", 0, None)
    item = GenerationItem.objects.get(pk=items[0].pk)
    assert (item.status, item.error) == ("pending", "")
    assert generation_run_retry_failed(run=run) == 0


def test_it_queues_a_run_again_when_its_budget_is_raised(seed_set):
    run = start(seed_set, sample_size=4, budget_tokens=100)
    GenerationRun.objects.filter(pk=run.pk).update(status="succeeded", budget_exhausted=True, prompt_tokens=150)
    assert not generation_run_set_budget(run=run, budget_tokens=120)  # still spent: stays finished
    assert fresh_status(run) == "succeeded"
    assert generation_run_set_budget(run=run, budget_tokens=1000)
    run.refresh_from_db()
    assert (run.status, run.budget_tokens, run.budget_exhausted) == ("queued", 1000, False)


def fresh_status(run):
    return GenerationRun.objects.get(pk=run.pk).status


def test_it_reports_progress_from_the_counters(seed_set):
    run = start(seed_set, sample_size=10)
    items = list(GenerationItem.objects.filter(run=run).order_by("id"))
    GenerationItem.objects.filter(pk__in=[i.pk for i in items[:2]]).update(status="in_flight")
    GenerationRun.objects.filter(pk=run.pk).update(status="running", done=5, failed=1, prompt_tokens=100,
                                                   completion_tokens=50, started_at=timezone.now() - timedelta(seconds=10))
    progress = generation_run_progress(run)
    assert (progress["done"], progress["failed"], progress["in_flight"], progress["pending"]) == (5, 1, 2, 2)
    assert progress["tokens"] == 150 and progress["rate_per_s"] == pytest.approx(0.6, rel=0.05)
    assert progress["eta_seconds"] == pytest.approx(4 / 0.6, rel=0.05)
    assert not progress["priced"]


def test_it_recovers_runs_whose_driver_went_silent(seed_set, settings):
    settings.JOB_STALE_SECONDS = 30
    now = timezone.now()
    stale = start(seed_set, sample_size=3)
    alive = start(seed_set, sample_size=3)
    GenerationRun.objects.filter(pk=stale.pk).update(status="running", heartbeat_at=now - timedelta(seconds=31))
    GenerationRun.objects.filter(pk=alive.pk).update(status="running", heartbeat_at=now - timedelta(seconds=5))
    GenerationItem.objects.filter(run=stale).update(status="in_flight", lease_expires_at=now - timedelta(seconds=1))
    GenerationItem.objects.filter(run=alive).update(status="in_flight", lease_expires_at=now + timedelta(seconds=25))

    requeued, all_stale_in = stale_runs_recover(now=now)
    assert requeued == [stale.pk]
    assert fresh_status(stale) == "queued" and fresh_status(alive) == "running"
    assert not GenerationItem.objects.filter(run=stale, status="in_flight").exists()
    assert GenerationItem.objects.filter(run=alive, status="in_flight").count() == 3
    # The live run would be stale in 25 s if its driver died now: the worker-start sweep checks again then.
    assert all_stale_in == pytest.approx(25.5, abs=0.01)
