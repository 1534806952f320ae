"""Self-chat generation end to end: a real Celery worker on Redis, Postgres, and a local OpenAI-protocol server.

Every test checks the run's accounting: each seed ends with exactly one dialogue or a recorded failure (or stays
pending when the budget stopped the run), and the run's usage and cost equal the sum over its ledger calls.
"""
import math
import time
from decimal import Decimal

import pytest
from django.db.models import Count, Q, Sum

from baize_eval.llm.models import Call
from collection.models import Dialogue, DialogueFlag, GenerationItem, GenerationRun
from collection.services import (
    generation_run_cancel, generation_run_pause, generation_run_resume, generation_run_retry_failed,
    generation_run_set_budget, generation_run_start,
)
from tests.factories import make_endpoint, make_price, make_seed_set, make_seeds, make_template
from tests.fake_openai import Reply, selfchat_script
from tests.processes import celery_worker, fake_openai, start_worker, wait_for  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PROMPT_PRICE = Decimal("1.00")  # USD per million tokens
COMPLETION_PRICE = Decimal("2.00")


def start_run(server, *, seeds=20, mode="transcript", endpoint_fields=None, **run_fields):
    seed_set = make_seed_set("garden")
    make_seeds(seed_set, [f"How do I grow plant number {i} on a balcony?" for i in range(seeds)])
    endpoint = make_endpoint(server.base_url, **(endpoint_fields or {}))
    make_price("fake-model", prompt=str(PROMPT_PRICE), completion=str(COMPLETION_PRICE))
    template = make_template(mode, name=f"baize-{mode}")
    run_fields.setdefault("concurrency", 8)
    return generation_run_start(seed_set=seed_set, endpoint=endpoint, model="fake-model", template=template,
                                mode=mode, **run_fields)


def fresh(run):
    return GenerationRun.objects.get(pk=run.pk)


def wait_finished(run, worker, timeout=90):
    return wait_for(lambda: fresh(run).is_finished and fresh(run), timeout=timeout,
                    message=f"run {run.pk} to finish", on_timeout=worker.log)


def ledger(run):
    return Call.objects.filter(job_kind="generation_run", job_id=run.pk)


def assert_accounted(run, *, allow_pending=False):
    """Each seed: exactly one dialogue, or a recorded failure (or still pending, when allowed); counters true."""
    run = fresh(run)
    items = GenerationItem.objects.filter(run=run)
    by_status = dict(items.values_list("status").annotate(n=Count("id")))
    assert by_status.get("in_flight", 0) == 0
    if not allow_pending:
        assert by_status.get("pending", 0) == 0
    assert items.count() == run.items_total
    per_seed = Dialogue.objects.filter(run=run).values("seed").annotate(n=Count("id"))
    assert all(row["n"] == 1 for row in per_seed)
    succeeded = set(items.filter(status="succeeded").values_list("seed_id", flat=True))
    assert set(Dialogue.objects.filter(run=run).values_list("seed_id", flat=True)) == succeeded
    assert run.done == len(succeeded)
    failed = items.filter(status="failed")
    assert run.failed == failed.count()
    assert all(item.error for item in failed)
    totals = ledger(run).aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"), cost=Sum("cost_usd"),
                                   n=Count("id"), estimated=Count("id", filter=Q(usage_estimated=True)))
    assert (run.prompt_tokens, run.completion_tokens, run.calls) == (totals["p"] or 0, totals["c"] or 0, totals["n"])
    assert run.estimated_calls == totals["estimated"]
    assert run.cost_usd == (totals["cost"] or 0)
    expected_cost = (Decimal(run.prompt_tokens) * PROMPT_PRICE + Decimal(run.completion_tokens) * COMPLETION_PRICE) \
        / Decimal(1_000_000)
    assert run.cost_usd == expected_cost.quantize(Decimal("0.00000001"))
    return run


def assert_matches_server(run, server):
    run = fresh(run)
    sent = server.usage_totals()
    assert (run.prompt_tokens, run.completion_tokens) == (sent["prompt_tokens"], sent["completion_tokens"])
    assert run.calls == len(server.ledger)


def test_it_turns_every_seed_into_one_parsed_dialogue_with_totals_equal_to_the_ledger(celery_worker, fake_openai):
    run = start_run(fake_openai, seeds=30)
    run = wait_finished(run, celery_worker)
    assert run.status == "succeeded", run.error
    run = assert_accounted(run)
    assert_matches_server(run, fake_openai)
    assert run.done == 30 and run.calls == 30 and run.prompt_tokens > 0
    dialogue = Dialogue.objects.filter(run=run).order_by("id").first()
    # The trailing, cut-off human question of the transcript is dropped (Baize semantics).
    assert [t["role"] for t in dialogue.turns] == ["human", "ai"] * 3
    assert dialogue.topic in dialogue.turns[0]["text"]
    assert dialogue.raw_output.endswith("[|Human|] And one more question that gets cut")
    assert dialogue.generation["template"]["name"] == "baize-transcript"
    assert dialogue.generation["model"] == "fake-model"
    assert dialogue.topic in dialogue.generation["prompts"][0]["messages"][0]["content"]
    [call] = dialogue.generation["calls"]
    assert call["purpose"] == "transcript" and call["finish_reason"] == "stop" and call["latency_ms"] >= 0
    assert (dialogue.prompt_tokens, dialogue.completion_tokens) == (call["prompt_tokens"], call["completion_tokens"])
    assert fake_openai.max_in_flight <= 8


def test_it_retries_rate_limits_server_errors_timeouts_and_malformed_bodies(celery_worker, fake_openai):
    fake_openai.queue(
        Reply(status=429, headers={"Retry-After": "1"}), Reply(status=500), Reply(status=503),
        Reply(hang=True), Reply(body="{this is not json"), Reply(status=429, headers={"retry-after-ms": "300"}),
    )
    run = start_run(fake_openai, seeds=12, concurrency=4, endpoint_fields={"timeout_seconds": 1.5, "max_attempts": 5})
    run = wait_finished(run, celery_worker)
    assert run.status == "succeeded", run.error
    run = assert_accounted(run)
    assert run.done == 12 and run.failed == 0
    errors = ledger(run).filter(outcome="error")
    # Every attempt that got a response is in the ledger (the timed-out one got none).
    assert errors.count() == 5
    assert {e.error.split(":")[0] for e in errors} >= {"HTTP 429", "HTTP 500", "HTTP 503", "malformed response"}
    assert_matches_server(run, fake_openai)


def test_it_finishes_against_a_server_that_omits_usage_with_estimates_and_says_so(celery_worker, fake_openai,
                                                                                  as_reviewer):
    fake_openai.script = lambda request, index: Reply(text=selfchat_script(request, index).text, usage=False)
    fake_openai.queue(Reply(status=500))  # and one that does count: a retry with no usage still settles the seed
    run = start_run(fake_openai, seeds=12, concurrency=4)
    run = wait_finished(run, celery_worker)
    assert run.status == "succeeded", run.error
    run = assert_accounted(run)  # priced from the estimates like real counts
    assert run.done == 12 and run.failed == 0
    assert run.calls == 13 and run.estimated_calls == 12  # the 500 is in the ledger, with no tokens to estimate
    assert ledger(run).filter(outcome="error", usage_estimated=False).count() == 1
    for dialogue in Dialogue.objects.filter(run=run):
        [call] = dialogue.generation["calls"]
        [message] = dialogue.generation["prompts"][0]["messages"]
        assert call["usage_estimated"] is True
        # 4 characters a token, rounded up, of the prompt and of the answer.
        assert dialogue.prompt_tokens == call["prompt_tokens"] == math.ceil(len(message["content"]) / 4)
        assert dialogue.completion_tokens == call["completion_tokens"] == math.ceil(len(dialogue.raw_output) / 4)
        assert len(dialogue.turns) == 6
    assert run.prompt_tokens > 0 and run.cost_usd > 0
    assert as_reviewer.get(f"/runs/{run.pk}/progress.json").json()["estimated_calls"] == 12
    page = as_reviewer.get(f"/runs/{run.pk}/").content.decode()
    assert "12 calls had no usage from the server: their tokens and cost are estimated, 4 characters a token." in page


def test_it_stops_at_the_token_budget_on_estimates_when_the_server_omits_usage(celery_worker, fake_openai):
    fake_openai.script = lambda request, index: Reply(text=selfchat_script(request, index).text, usage=False)
    run = start_run(fake_openai, seeds=40, concurrency=2, budget_tokens=1000)
    run = wait_finished(run, celery_worker)
    run = assert_accounted(run, allow_pending=True)
    assert run.status == "succeeded" and run.budget_exhausted
    assert run.estimated_calls == run.calls > 0
    assert run.total_tokens >= 1000  # 0-token calls would never have reached it
    assert GenerationItem.objects.filter(run=run, status="pending").exists()


def test_it_records_a_seed_that_still_fails_and_retries_it_later(celery_worker, fake_openai):
    broken = {"on": True}

    def script(request, index):
        if broken["on"] and "plant number 3 " in str(request["messages"]):
            return Reply(status=500, error_message="the model crashed")
        return selfchat_script(request, index)

    fake_openai.script = script
    run = start_run(fake_openai, seeds=6, endpoint_fields={"max_attempts": 2})
    run = wait_finished(run, celery_worker)
    assert run.status == "succeeded"
    run = assert_accounted(run)
    assert (run.done, run.failed) == (5, 1)
    item = GenerationItem.objects.get(run=run, status="failed")
    assert "plant number 3 " in item.seed.text + " "
    assert "HTTP 500" in item.error and "the model crashed" in item.error and "2 attempt" in item.error

    broken["on"] = False
    assert generation_run_retry_failed(run=run) == 1
    run = wait_for(lambda: fresh(run).status == "succeeded" and fresh(run).done == 6 and fresh(run),
                   timeout=60, message="the retried seed", on_timeout=celery_worker.log)
    run = assert_accounted(run)
    assert run.failed == 0


def test_it_stops_at_the_token_budget_with_overshoot_at_most_the_requests_in_flight(celery_worker, fake_openai):
    fake_openai.latency = 0.05
    run = start_run(fake_openai, seeds=60, concurrency=4, budget_tokens=1200)
    run = wait_finished(run, celery_worker)
    run = assert_accounted(run, allow_pending=True)
    assert run.status == "succeeded" and run.budget_exhausted
    biggest = max(ledger(run).values_list("prompt_tokens", flat=True)) + \
        max(ledger(run).values_list("completion_tokens", flat=True))
    assert 1200 <= run.total_tokens <= 1200 + run.concurrency * biggest
    pending = GenerationItem.objects.filter(run=run, status="pending").count()
    assert pending > 0 and run.done + pending == 60
    assert_matches_server(run, fake_openai)

    # Raising the budget lets the untouched seeds run.
    assert generation_run_set_budget(run=run, budget_tokens=None)
    run = wait_for(lambda: fresh(run).status == "succeeded" and fresh(run).done == 60 and fresh(run),
                   timeout=60, message="the rest of the seeds", on_timeout=celery_worker.log)
    assert not run.budget_exhausted
    assert_accounted(run)


def test_it_holds_a_usd_budget_between_the_calls_of_a_turns_dialogue(celery_worker, fake_openai):
    fake_openai.script = lambda request, index: selfchat_script(request, index, human_turns=10)
    # The budget must not depend on how the dialogues' calls interleave. It buys more than the opening questions of
    # all 20 seeds, so it cannot be spent before some dialogue has had an answer (open dialogues share the slots
    # first come, first served: a smaller budget could go on opening questions alone). It buys less than the first
    # 19 of a dialogue's 20 calls (about $0.004 here), so no dialogue can finish before it runs out.
    budget = Decimal("0.0025")
    run = start_run(fake_openai, seeds=20, mode="turns", max_turns=10, concurrency=2, budget_usd=str(budget))
    run = wait_finished(run, celery_worker)
    run = assert_accounted(run, allow_pending=True)
    assert run.status == "succeeded" and run.budget_exhausted
    costs = list(ledger(run).values_list("cost_usd", flat=True))
    opening = min(ledger(run).filter(purpose="human").values_list("cost_usd", flat=True))
    assert 20 * opening < budget, "the budget no longer outlasts every opening question; raise it"
    assert budget <= run.cost_usd <= budget + run.concurrency * max(costs)
    # Dialogues stopped between their calls: the budget is checked before each call, not each seed.
    stopped = [d for d in Dialogue.objects.filter(run=run) if d.generation.get("stopped") == "budget"]
    assert stopped and all(len(d.turns) < 20 for d in stopped)
    assert all(d.turns and d.turns[-1]["role"] == "ai" for d in stopped)


def test_it_finishes_with_no_duplicate_and_no_lost_seed_after_the_worker_is_killed(start_worker, fake_openai):
    fake_openai.latency = 0.25
    first = start_worker()
    run = start_run(fake_openai, seeds=80, concurrency=8)
    wait_for(lambda: fresh(run).done >= 15, timeout=60, message="some progress", on_timeout=first.log)
    first.kill()
    killed_at = fresh(run)
    assert killed_at.status == "running" and killed_at.done < 80
    second = start_worker()
    run = wait_finished(run, second, timeout=120)
    assert run.status == "succeeded", run.error
    run = assert_accounted(run)
    assert run.done == 80 and run.failed == 0
    assert Dialogue.objects.filter(run=run).count() == 80
    # The killed worker's unanswered requests were real spend for the server, never recorded by us: the ledger
    # can only be below the server's count, never above.
    assert run.calls <= len(fake_openai.ledger)
    assert GenerationItem.objects.filter(run=run, attempts__gt=1).exists()


def test_it_pauses_resumes_and_cancels(celery_worker, fake_openai):
    fake_openai.latency = 0.2
    run = start_run(fake_openai, seeds=80, concurrency=4)
    wait_for(lambda: fresh(run).done >= 4, message="first dialogues", on_timeout=celery_worker.log)
    assert generation_run_pause(run=run)
    wait_for(lambda: fresh(run).driver_token is None, message="the driver to stop", on_timeout=celery_worker.log)
    paused = fresh(run)
    assert paused.status == "paused" and paused.done < 80
    assert not GenerationItem.objects.filter(run=run, status="in_flight").exists()
    time.sleep(1.0)
    assert fresh(run).done == paused.done  # nothing moves while paused
    assert_accounted(run, allow_pending=True)

    assert generation_run_resume(run=run)
    wait_for(lambda: fresh(run).done >= paused.done + 8, message="progress after resume", on_timeout=celery_worker.log)
    assert generation_run_cancel(run=run)
    wait_for(lambda: fresh(run).driver_token is None and
             not GenerationItem.objects.filter(run=run, status="in_flight").exists(),
             message="the driver to stop after cancel", on_timeout=celery_worker.log)
    cancelled = assert_accounted(run, allow_pending=True)
    assert cancelled.status == "cancelled" and cancelled.done < 80
    time.sleep(1.0)
    assert fresh(run).done == cancelled.done
    assert not generation_run_resume(run=run)


def test_it_runs_turns_mode_end_to_end(celery_worker, fake_openai):
    fake_openai.script = lambda request, index: selfchat_script(request, index, human_turns=2)
    run = start_run(fake_openai, seeds=10, mode="turns", max_turns=4)
    run = wait_finished(run, celery_worker)
    assert run.status == "succeeded", run.error
    run = assert_accounted(run)
    assert_matches_server(run, fake_openai)
    # Per dialogue: human, answer, human, answer, then the human writes the end marker.
    assert run.calls == 10 * 5
    dialogue = Dialogue.objects.filter(run=run).order_by("id").first()
    assert [t["role"] for t in dialogue.turns] == ["human", "ai", "human", "ai"]
    assert dialogue.turns[0]["text"].startswith("Question 1 about")
    assert dialogue.turns[1]["text"] == "Here is an answer to: " + dialogue.turns[0]["text"]
    assert [c["purpose"] for c in dialogue.generation["calls"]] == ["human", "assistant"] * 2 + ["human"]
    assert dialogue.generation["stopped"] == "human ended the conversation"
    assert sum(c["prompt_tokens"] for c in dialogue.generation["calls"]) == dialogue.prompt_tokens
    # The answering call is a clean chat: system prompt, then the conversation as alternating messages.
    answer_requests = [r for r in fake_openai.requests if not r.get("stop")]
    longest = max(answer_requests, key=lambda r: len(r["messages"]))
    assert [m["role"] for m in longest["messages"]] == ["system", "user", "assistant", "user"]
    human_requests = [r for r in fake_openai.requests if r.get("stop")]
    assert all(r["stop"] == ["[|AI|]"] for r in human_requests)


def test_it_keeps_unparseable_output_flagged_without_crashing_the_run(celery_worker, fake_openai):
    def script(request, index):
        if "plant number 1 " in str(request["messages"]):
            return Reply(text="I would rather write a poem about balconies.")
        if "plant number 2 " in str(request["messages"]):
            return Reply(text="[|Human|] Hi?\n[|AI|] Hello, the answer was cut off because", finish_reason="length")
        return selfchat_script(request, index)

    fake_openai.script = script
    run = start_run(fake_openai, seeds=5)
    run = wait_finished(run, celery_worker)
    assert run.status == "succeeded"
    assert_accounted(run)
    garbage = Dialogue.objects.get(run=run, topic__contains="plant number 1 ")
    assert garbage.parse_error and garbage.turns == []
    assert garbage.raw_output == "I would rather write a poem about balconies."
    assert DialogueFlag.objects.filter(dialogue=garbage, rule="malformed").exists()
    cut = Dialogue.objects.get(run=run, topic__contains="plant number 2 ")
    assert cut.finish_reason == "length"
    assert DialogueFlag.objects.filter(dialogue=cut, rule="truncated").exists()


def test_it_hands_the_run_back_to_the_queue_when_the_worker_shuts_down(start_worker, fake_openai):
    fake_openai.latency = 0.3
    first = start_worker()
    run = start_run(fake_openai, seeds=60, concurrency=4)
    wait_for(lambda: fresh(run).done >= 4, message="some progress", on_timeout=first.log)
    started = time.monotonic()
    first.stop()  # SIGTERM: Celery's warm shutdown
    assert time.monotonic() - started < 10, "the warm shutdown waited for the whole run"
    handed_back = fresh(run)
    assert handed_back.status == "queued" and handed_back.driver_token is None and handed_back.done < 60
    assert not GenerationItem.objects.filter(run=run, status="in_flight").exists()
    assert_accounted(run, allow_pending=True)
    second = start_worker()
    run = wait_finished(run, second)
    assert run.status == "succeeded"
    assert assert_accounted(run).done == 60
