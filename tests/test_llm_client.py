"""The LLM client against the local OpenAI-protocol server: retries, Retry-After, the usage ledger and its cost
(estimated when the server sends no usage), key scrubbing, and requests/min limits shared through Redis."""
import asyncio
import json
import logging
import time
from decimal import Decimal

import pytest

from baize_eval.llm.client import EndpointClient, LLMError, chat_sync
from baize_eval.llm.models import Call, Endpoint
from baize_eval.llm.ratelimit import EndpointLimiter, make_storage
from tests.factories import make_endpoint, make_price
from tests.fake_openai import Reply
from tests.processes import fake_openai  # noqa: F401 (fixture)

# The client writes the ledger from its own database threads: the test data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me about the topic: 'basil'"}]
SECRET = "sk-test-abcdefghijklmnop0123456789"


def call(endpoint, **kwargs):
    kwargs.setdefault("model", "fake-model")
    kwargs.setdefault("messages", MESSAGES)
    return chat_sync(endpoint=endpoint, **kwargs)


def test_it_returns_text_usage_latency_and_finish_reason_and_records_the_call(fake_openai):
    fake_openai.queue(Reply(text="Basil likes sun.", finish_reason="stop", delay=0.2))
    endpoint = make_endpoint(fake_openai.base_url)
    result = call(endpoint, params={"temperature": 0.3, "max_tokens": 50, "top_k": 40}, purpose="judge",
                  job_kind="campaign", job_id=7)
    assert result.text == "Basil likes sun."
    assert result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (6, 3)
    assert result.latency_ms >= 200
    [request] = fake_openai.requests
    assert request["temperature"] == 0.3 and request["max_tokens"] == 50 and request["top_k"] == 40
    row = Call.objects.get(pk=result.call_id)
    assert (row.purpose, row.job_kind, row.job_id, row.outcome) == ("judge", "campaign", 7, "ok")
    assert (row.prompt_tokens, row.completion_tokens) == (6, 3)


def test_it_prices_calls_from_the_price_table_and_costs_nothing_without_a_price(fake_openai):
    endpoint = make_endpoint(fake_openai.base_url)
    unpriced = call(endpoint)
    assert unpriced.cost_usd == 0 and not unpriced.priced
    make_price("fake-model", prompt="3.00", completion="15.00")
    priced = call(endpoint)
    expected = (Decimal(priced.prompt_tokens) * 3 + Decimal(priced.completion_tokens) * 15) / 1_000_000
    assert priced.priced and priced.cost_usd == expected
    assert Call.objects.get(pk=priced.call_id).cost_usd == expected


def test_it_estimates_usage_at_four_characters_a_token_when_the_server_sends_none(fake_openai):
    make_price("fake-model", prompt="3.00", completion="15.00")
    endpoint = make_endpoint(fake_openai.base_url)
    # 9 + 31 = 40 characters of prompt: 10 tokens (a rounding per message would say 11); the answer's 39
    # characters: 10 tokens, rounded up. The server's own count (whitespace words) would be 8 and 8.
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tell me about the topic: 'mint'"}]
    fake_openai.queue(Reply(text="Basil likes sun, water and a warm sill.", usage=False))
    result = call(endpoint, messages=messages)
    assert result.attempts == 1 and result.text == "Basil likes sun, water and a warm sill."
    assert result.usage_estimated and (result.prompt_tokens, result.completion_tokens) == (10, 10)
    expected = (Decimal(10) * 3 + Decimal(10) * 15) / 1_000_000
    assert result.cost_usd == expected and result.usage()["usage_estimated"] is True
    row = Call.objects.get(pk=result.call_id)
    assert (row.outcome, row.usage_estimated, row.prompt_tokens, row.completion_tokens) == ("ok", True, 10, 10)
    assert row.cost_usd == expected
    # A server that sends usage is taken at its word.
    fake_openai.queue(Reply(text="Basil likes sun, water and a warm sill."))
    counted = call(endpoint, messages=messages)
    assert not counted.usage_estimated and (counted.prompt_tokens, counted.completion_tokens) == (8, 8)
    assert not Call.objects.get(pk=counted.call_id).usage_estimated
    assert Call.objects.filter(outcome="error").count() == 0


def test_it_estimates_usage_that_is_not_a_pair_of_counts(fake_openai):
    endpoint = make_endpoint(fake_openai.base_url)
    body = {"id": "x", "object": "chat.completion", "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Twelve chars"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": -3, "completion_tokens": "12"}}
    fake_openai.queue(Reply(body=json.dumps(body)))
    result = call(endpoint)  # MESSAGES: 32 characters
    assert result.attempts == 1 and result.usage_estimated
    assert (result.prompt_tokens, result.completion_tokens) == (8, 3)
    assert Call.objects.get(pk=result.call_id).usage_estimated


def test_it_honors_retry_after_and_retry_after_ms(fake_openai):
    endpoint = make_endpoint(fake_openai.base_url)
    fake_openai.queue(Reply(status=429, headers={"Retry-After": "1"}), Reply(status=503, headers={"retry-after-ms": "600"}))
    started = time.monotonic()
    result = call(endpoint)
    assert result.attempts == 3
    first, second, third = fake_openai.ledger
    assert second["at"] - first["at"] >= 1.0
    assert third["at"] - second["at"] >= 0.6
    assert time.monotonic() - started >= 1.6
    errors = list(Call.objects.filter(outcome="error").order_by("id").values_list("error", flat=True))
    assert [e.split(":")[0] for e in errors] == ["HTTP 429", "HTTP 503"]


def test_it_gives_up_after_max_attempts_with_the_last_error(fake_openai):
    endpoint = make_endpoint(fake_openai.base_url, max_attempts=3)
    fake_openai.script = lambda request, index: Reply(status=500, error_message="overloaded",
                                                      headers={"retry-after-ms": "10"})
    with pytest.raises(LLMError) as failure:
        call(endpoint)
    assert failure.value.attempts == 3 and failure.value.status == 500
    assert "HTTP 500" in str(failure.value) and "overloaded" in str(failure.value)
    assert len(fake_openai.requests) == 3
    assert Call.objects.filter(outcome="error").count() == 3


def test_it_retries_a_timeout_and_records_no_call_for_it(fake_openai):
    endpoint = make_endpoint(fake_openai.base_url, timeout_seconds=0.5)
    fake_openai.queue(Reply(hang=True))
    result = call(endpoint)
    assert result.attempts == 2
    assert Call.objects.count() == 1  # the timed-out attempt never got a response


def test_it_retries_malformed_bodies_only_a_few_times(fake_openai):
    endpoint = make_endpoint(fake_openai.base_url, max_attempts=10)
    fake_openai.script = lambda request, index: Reply(body="<html>gateway</html>", content_type="text/html",
                                                      delay=0)
    with pytest.raises(LLMError) as failure:
        call(endpoint)
    assert failure.value.attempts == 3  # one try and two retries, not max_attempts
    assert "malformed response" in str(failure.value)
    assert Call.objects.filter(outcome="error").count() == 3


def test_it_does_not_retry_a_bad_request(fake_openai):
    endpoint = make_endpoint(fake_openai.base_url)
    fake_openai.queue(Reply(status=400, error_message="max_tokens is too large"))
    with pytest.raises(LLMError) as failure:
        call(endpoint)
    assert failure.value.attempts == 1 and "max_tokens is too large" in str(failure.value)
    assert len(fake_openai.requests) == 1


def test_it_never_shows_the_api_key_in_errors_logs_or_the_ledger(fake_openai, monkeypatch, caplog):
    monkeypatch.setenv("BAIZE_TEST_KEY", SECRET)
    endpoint = Endpoint.objects.create(name="keyed", base_url=fake_openai.base_url, api_key_env="BAIZE_TEST_KEY",
                                       max_attempts=2)
    fake_openai.script = lambda request, index: Reply(
        status=503, headers={"retry-after-ms": "10"},
        error_message=f"Incorrect API key provided: {SECRET}. Also sk-proj-OTHERKEY1234567 is wrong.",
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LLMError) as failure:
        call(endpoint)
    assert "Incorrect API key provided" in str(failure.value)
    texts = [str(failure.value), caplog.text] + list(Call.objects.values_list("error", flat=True))
    for text in texts:
        assert SECRET not in text and "abcdefghijklmnop" not in text and "OTHERKEY1234567" not in text
    assert fake_openai.requests  # the key was sent to the server, as it must be
    assert endpoint.has_key


def test_it_holds_a_requests_per_minute_limit_shared_through_redis_by_two_clients(fake_openai):
    endpoint = make_endpoint(fake_openai.base_url, requests_per_minute=5)

    async def scenario():
        first, second = EndpointClient(endpoint, concurrency=8), EndpointClient(endpoint, concurrency=8)
        # Each client has its own Redis connection: only the Redis window is shared between them.
        assert first.limiter.storage is not second.limiter.storage
        await first.limiter.requests.clear(first.limiter.rpm, first.limiter.key)
        calls = [asyncio.create_task(client.chat(model="fake-model", messages=MESSAGES))
                 for client in (first, second) for _ in range(4)]
        await asyncio.sleep(2.5)
        sent = len(fake_openai.requests)
        finished = sum(task.done() for task in calls)
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        for client in (first, second):
            await client.aclose()
        return sent, finished

    sent, finished = asyncio.run(scenario())
    assert sent == 5 and finished == 5


def test_it_waits_for_room_in_the_tokens_per_minute_window():
    async def scenario():
        limiter = EndpointLimiter(endpoint_id="tpm-test", tokens_per_minute=1000, storage=make_storage())
        await limiter.tokens.clear(limiter.tpm, limiter.key)
        assert await limiter.acquire(tokens=600) == 600
        waiting = asyncio.create_task(limiter.acquire(tokens=600))
        await asyncio.sleep(1.0)
        blocked = not waiting.done()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await limiter.close()
        return blocked

    assert asyncio.run(scenario())
