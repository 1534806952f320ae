"""Call a chat completion on any OpenAI-compatible endpoint and get text, usage, cost and latency back.

What a user gets: one place that talks to OpenAI, vLLM, Ollama or a llama.cpp server for every job (self-chat,
LLM judge, remote inference), with
  - retries with backoff on 429, 5xx, timeouts, connection errors and (a bounded number of) malformed bodies,
    honoring Retry-After / retry-after-ms, up to the endpoint's max_attempts;
  - the endpoint's requests/min and tokens/min shared by all workers (baize_eval.llm.ratelimit);
  - every attempt that got a response written to the usage ledger (llm.Call), priced from llm.ModelPrice
    (a model without a price costs 0 and the result says it was unpriced);
  - a server that sends no usage (some proxies and local servers omit it) still answers: the call's tokens are
    estimated from the text, 4 characters a token (see estimate_usage), and the ledger row says so;
  - the API key never in logs, errors or pages: it is scrubbed from every error text.

Async first (a generation run keeps dozens of requests in flight on one event loop):

    async with EndpointClient(endpoint, concurrency=64) as llm:
        result = await llm.chat(model="gpt-4o-mini", messages=[...], purpose="transcript",
                                job_kind="generation_run", job_id=run.pk)

`chat(...)` and `chat_sync(...)` do one call with a client of their own.
"""
import asyncio
import email.utils
import logging
import random
import re
import time
from dataclasses import dataclass
from decimal import Decimal

import httpx2
import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from baize_eval.llm.dbthreads import DatabaseThreads
from baize_eval.llm.models import Call, ModelPrice
from baize_eval.llm.ratelimit import EndpointLimiter, estimate_tokens

logger = logging.getLogger(__name__)

RETRY_STATUSES = {408, 409, 425, 429}  # and every 5xx
# A server that answers 200 with garbage is usually broken, not busy: retry it a little, not max_attempts times.
MAX_MALFORMED_RETRIES = 2
MAX_RETRY_AFTER_SECONDS = 120.0
ERROR_TEXT_LIMIT = 1000
COST_QUANTUM = Decimal("0.00000001")  # llm.Call.cost_usd has 8 decimal places
# The usual rule of thumb for English text; no tokenizer is at hand for an arbitrary model behind an endpoint.
CHARS_PER_TOKEN = 4
_KEY_LIKE = re.compile(r"\b(sk|pk|rk|key)-[A-Za-z0-9_\-*.]{6,}")


@dataclass
class ChatResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    latency_ms: int
    attempts: int
    model: str
    call_id: int | None
    priced: bool
    usage_estimated: bool = False

    @property
    def total_tokens(self):
        return self.prompt_tokens + self.completion_tokens

    def usage(self):
        """What a dialogue records about this call."""
        return {
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": str(self.cost_usd), "latency_ms": self.latency_ms, "finish_reason": self.finish_reason,
            "attempts": self.attempts, "call_id": self.call_id, "usage_estimated": self.usage_estimated,
        }


class LLMError(Exception):
    """The call failed for good (after retries, or at once for errors a retry cannot fix). The text is safe to
    store and show: the API key is scrubbed from it."""

    def __init__(self, message, *, attempts=0, status=None):
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class DispatchRefused(Exception):
    """The caller's gate said no before a request went out (e.g. the run's budget is spent)."""


class MalformedResponse(Exception):
    """The endpoint answered 200 but not with a chat completion we can read."""


def scrub(text, secret=None):
    """Remove the API key (and anything shaped like a key) from text bound for logs, errors or pages."""
    text = str(text)
    if secret and secret != "none" and len(secret) >= 4:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub(lambda m: m.group(1) + "-***", text)


def retry_after_seconds(exc):
    """The server's requested wait (retry-after-ms, then Retry-After as seconds or an HTTP date), or None."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return min(max(float(raw_ms) / 1000.0, 0.0), MAX_RETRY_AFTER_SECONDS)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = parsed.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def is_transient(exc):
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUSES or exc.status_code >= 500
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, MalformedResponse):
        return getattr(exc, "retry_allowed", False)
    return False


_exponential = wait_random_exponential(multiplier=0.5, max=30)


def backoff(retry_state):
    """Honor the server's Retry-After; otherwise exponential backoff with full jitter."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    requested = retry_after_seconds(exc) if exc is not None else None
    if requested is not None:
        return requested + random.uniform(0, min(0.25, requested * 0.1 + 0.01))
    return _exponential(retry_state)


def describe_error(exc):
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out waiting for the endpoint"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"connection error: {cause or exc.message}"
    if isinstance(exc, MalformedResponse):
        return f"malformed response: {exc}"
    return f"{type(exc).__name__}: {exc}"


class EndpointClient:
    """A connection pool, shared rate limits and the ledger for one endpoint on one event loop."""

    def __init__(self, endpoint, *, concurrency=8, db=None, limiter=None):
        self.endpoint = endpoint
        self._secret = endpoint.api_key()
        self._own_db = db is None
        self.db = db if db is not None else DatabaseThreads(1, name="llm-ledger")
        self.limiter = limiter if limiter is not None else EndpointLimiter(
            endpoint_id=endpoint.pk, requests_per_minute=endpoint.requests_per_minute,
            tokens_per_minute=endpoint.tokens_per_minute,
        )
        pool = max(1, int(concurrency))
        limits = httpx2.Limits(max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=30.0)
        # The SDK's aiohttp transport: at dozens of requests in flight the default httpx2 pool spends most of the
        # event loop's time scanning its connections; aiohttp's connector does not (see bench/selfchat_throughput.py).
        self._http = openai.DefaultAioHttpClient(limits=limits)
        self._openai = openai.AsyncOpenAI(
            base_url=endpoint.base_url, api_key=self._secret, timeout=endpoint.timeout_seconds,
            max_retries=0, http_client=self._http,
        )
        self._prices = {}
        self._warned_estimate = False
        # Requests in flight at once through this client (the HTTP pool is the same size).
        self._slots = asyncio.Semaphore(pool)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.aclose()

    async def aclose(self):
        await self._openai.close()
        await self.limiter.close()
        if self._own_db:
            await asyncio.to_thread(self.db.stop)

    async def chat(self, *, model, messages, params=None, purpose="", job_kind="", job_id=None, stop=None,
                   gate=None, recorder=None):
        """One chat completion, retried as the module docstring says.

        gate(): checked before every attempt; False raises DispatchRefused (nothing is sent).
        recorder(row): an async callable that stores a ledger row (a dict of llm.Call fields) and returns its id;
          a job passes its own to write the row together with its usage counters (default: one INSERT each). It
          is called as soon as the answer is in, before any other coroutine runs.
        Raises LLMError when the call fails for good."""
        params = dict(params or {})
        body = {name: value for name, value in params.items() if name not in ("model", "messages", "stream")}
        if stop:
            body["stop"] = stop
        body.update(model=model, messages=messages)
        ledger = {"model": model, "purpose": purpose, "job_kind": job_kind, "job_id": job_id}
        estimate = estimate_tokens(messages, params)
        price = await self._price(model)
        malformed = 0
        attempts = 0

        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, self.endpoint.max_attempts)),
            wait=backoff,
            retry=retry_if_exception(is_transient),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if gate is not None and not gate():
                        raise DispatchRefused()
                    attempts += 1
                    completion, failure, latency_ms, reserved = await self._send(body, gate, estimate)
                    if failure is None:
                        try:
                            text, finish_reason, usage = _read_completion(completion)
                        except MalformedResponse as exc:
                            failure = exc
                    if failure is not None:
                        if isinstance(failure, MalformedResponse):
                            malformed += 1
                            failure.retry_allowed = malformed <= MAX_MALFORMED_RETRIES
                        # It got a response, so it goes in the ledger (usage unknown or none).
                        row = self._ledger_row(ledger, price, latency_ms, outcome=Call.Outcome.ERROR,
                                               error=describe_error(failure))
                        await (recorder or self._insert_call)(row)
                        raise failure
                    usage_estimated = usage is None
                    if usage_estimated:
                        # Priced, budgeted and rate limited like real counts: better roughly right than free.
                        usage = estimate_usage(messages, text)
                        self._warn_estimated(model)
                    prompt_tokens, completion_tokens = usage
                    # No await between the answer and the recorder's first line: a job that counts its spend
                    # there (a budget) sees every answered request before another one is sent.
                    row = self._ledger_row(ledger, price, latency_ms, outcome=Call.Outcome.OK,
                                           prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                           usage_estimated=usage_estimated)
                    call_id = await (recorder or self._insert_call)(row)
                    if self.limiter.active:
                        await self.limiter.settle(reserved=reserved, used=prompt_tokens + completion_tokens)
                    return ChatResult(
                        text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens, cost_usd=row["cost_usd"], latency_ms=latency_ms,
                        attempts=attempts, model=model, call_id=call_id, priced=price is not None,
                        usage_estimated=usage_estimated,
                    )
        except (MalformedResponse, openai.OpenAIError) as exc:
            status = getattr(exc, "status_code", None)
            raise LLMError(scrub(f"after {attempts} attempt(s): {describe_error(exc)}", self._secret)[:ERROR_TEXT_LIMIT],
                           attempts=attempts, status=status) from None

    async def _send(self, body, gate, estimate):
        """One request under a connection slot: (body, None, latency_ms, reserved tokens) or (None, the error
        response as an exception, ...). The slot is held for the request only, not for the ledger write after it,
        so a slow database never leaves the endpoint idle. Timeouts and connection errors propagate."""
        async with self._slots:
            # Checked again: waiting for a slot may have taken a while, and the budget moves meanwhile.
            if gate is not None and not gate():
                raise DispatchRefused()
            reserved = await self.limiter.acquire(tokens=estimate) if self.limiter.active else 0
            started = time.perf_counter()
            try:
                # The SDK's generic request (its documented way to make custom requests): the typed
                # chat.completions.create walks every message through its TypedDict transforms and builds pydantic
                # models for the answer, which costs more CPU than everything else a run does.
                completion = await self._openai.post("/chat/completions", body=body, cast_to=object)
            except openai.APIStatusError as exc:
                return None, exc, _ms_since(started), reserved
            except (openai.APIResponseValidationError, ValueError) as exc:
                # A 200 that is not even JSON (the SDK failed to decode it).
                return None, MalformedResponse(f"{type(exc).__name__}: {str(exc)[:200]}"), _ms_since(started), reserved
            return completion, None, _ms_since(started), reserved

    def _log_retry(self, retry_state):
        exc = retry_state.outcome.exception()
        logger.warning(
            "%s: attempt %d failed (%s); retrying in %.2fs", self.endpoint.name, retry_state.attempt_number,
            scrub(describe_error(exc), self._secret)[:300], retry_state.next_action.sleep if retry_state.next_action else 0,
        )

    def _warn_estimated(self, model):
        if not self._warned_estimate:  # once per client: a run sends thousands of these
            self._warned_estimate = True
            logger.warning("%s: a %s completion came without usage; its tokens and cost are estimated "
                           "(%d characters a token)", self.endpoint.name, model, CHARS_PER_TOKEN)

    async def _price(self, model):
        if model not in self._prices:
            self._prices[model] = await self.db.run(lambda: ModelPrice.objects.filter(model=model).first())
        return self._prices[model]

    def _ledger_row(self, ledger, price, latency_ms, *, outcome, prompt_tokens=0, completion_tokens=0,
                    usage_estimated=False, error=""):
        """An llm.Call row (as a dict), priced from the price table (no price: cost 0)."""
        cost = price.cost(prompt_tokens, completion_tokens) if price else Decimal("0")
        return dict(ledger, endpoint_id=self.endpoint.pk, outcome=outcome, prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens, usage_estimated=usage_estimated,
                    cost_usd=cost.quantize(COST_QUANTUM), latency_ms=latency_ms,
                    error=scrub(error, self._secret)[:ERROR_TEXT_LIMIT])

    async def _insert_call(self, row):
        return await self.db.run(lambda: Call.objects.create(**row).pk)


def _ms_since(started):
    return int((time.perf_counter() - started) * 1000)


def _read_completion(data):
    """(text, finish_reason, (prompt_tokens, completion_tokens)) from a chat completion body, or MalformedResponse.
    The usage is None when the body has none we can trust (missing, or not non-negative integers)."""
    if not isinstance(data, dict):
        raise MalformedResponse("the body is not a chat completion object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("no choices in the response")
    choice = choices[0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if text is not None and not isinstance(text, str):
        raise MalformedResponse("message.content is not text")
    usage = data.get("usage")
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    usage = (prompt_tokens, completion_tokens) if _is_count(prompt_tokens) and _is_count(completion_tokens) else None
    return text or "", str(choice.get("finish_reason") or ""), usage


def estimate_usage(messages, answer):
    """(prompt_tokens, completion_tokens) for a server that sent no usage: ceil(characters / 4) of the request
    messages' text together, and of the answer's text. Roughly right for English; it leaves out the few tokens a
    chat template adds per message, and code or other languages can take more tokens per character."""
    prompt_chars = sum(len(_message_text(message)) for message in messages)
    return _ceil_tokens(prompt_chars), _ceil_tokens(len(answer))


def _message_text(message):
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts: only the text parts count
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return str(content or "")


def _ceil_tokens(chars):
    return -(-chars // CHARS_PER_TOKEN)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def chat(*, endpoint, model, messages, params=None, purpose="", job_kind="", job_id=None, stop=None):
    """One chat completion with a client of its own (for jobs that make few calls, e.g. an LLM judge)."""
    async with EndpointClient(endpoint, concurrency=1) as client:
        return await client.chat(model=model, messages=messages, params=params, purpose=purpose,
                                 job_kind=job_kind, job_id=job_id, stop=stop)


def chat_sync(**kwargs):
    """`chat` for synchronous code (management commands, Celery tasks that make a single call)."""
    return asyncio.run(chat(**kwargs))
