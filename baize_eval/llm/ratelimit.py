"""Requests/min and tokens/min per endpoint, shared by every worker through Redis (the `limits` library).

What a user gets: an endpoint's `requests_per_minute` and `tokens_per_minute` hold across all workers and runs
that call it, so a run never trips the provider's own limits by itself. Without Redis (the embedded SQLite demo)
the limits hold within the one process, in memory.

Requests use a moving window (exact; one entry per request). Tokens use a sliding-window counter, because a
moving window stores one entry per unit of cost and a single request may cost thousands of tokens. A request
reserves its prompt estimate plus its max_tokens before it is sent (providers count max_tokens against the limit
too); when the answer turns out bigger, the difference is charged afterwards.
"""
import asyncio
import random
import time

from django.conf import settings
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

# Waits are re-checked at least this often, so a limit raised by an admin takes effect soon.
MAX_WAIT_SLICE_SECONDS = 2.0


def make_storage(redis_url=None):
    """Redis storage when a Redis URL is configured (shared by all workers), else in-process memory."""
    url = settings.REDIS_URL if redis_url is None else redis_url
    if url:
        return RedisStorage("async+" + url, implementation="redispy", key_prefix="baize-limits")
    return MemoryStorage()


def estimate_tokens(messages, params):
    """A cheap upper-side estimate of what a request will count: ~4 characters a token, plus its max_tokens."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    completion = params.get("max_completion_tokens") or params.get("max_tokens") or 0
    return chars // 4 + 1 + int(completion)


class EndpointLimiter:
    """The shared limits of one endpoint. Bound to the event loop it is first used on."""

    def __init__(self, *, endpoint_id, requests_per_minute=0, tokens_per_minute=0, storage=None):
        self.key = f"endpoint-{endpoint_id}"
        self.rpm = RateLimitItemPerMinute(requests_per_minute) if requests_per_minute else None
        self.tpm = RateLimitItemPerMinute(tokens_per_minute) if tokens_per_minute else None
        self.storage = storage if storage is not None else (make_storage() if (self.rpm or self.tpm) else None)
        self.requests = MovingWindowRateLimiter(self.storage) if self.rpm else None
        self.tokens = SlidingWindowCounterRateLimiter(self.storage) if self.tpm else None
        self.waited_seconds = 0.0

    @property
    def active(self):
        return bool(self.rpm or self.tpm)

    async def acquire(self, *, tokens=0):
        """Wait until one more request (and `tokens` more tokens) fit in the endpoint's minute; returns the tokens
        reserved, to pass to `settle` with the real usage."""
        if self.rpm:
            await self._wait_for(self.requests, self.rpm, 1)
        reserved = 0
        if self.tpm:
            # A request bigger than the whole minute's budget could never pass: it waits for an empty window.
            reserved = max(1, min(int(tokens), self.tpm.amount))
            await self._wait_for(self.tokens, self.tpm, reserved)
        return reserved

    async def settle(self, *, reserved, used):
        """Charge the tokens a request used beyond what it reserved (never waits: the request already happened)."""
        if self.tpm and used > reserved:
            await self.tokens.hit(self.tpm, self.key, cost=min(int(used - reserved), self.tpm.amount))

    async def _wait_for(self, limiter, item, cost):
        while not await limiter.hit(item, self.key, cost=cost):
            stats = await limiter.get_window_stats(item, self.key)
            wait = stats.reset_time - time.time()
            # Jitter spreads the workers that wake for the same freed slot.
            wait = min(max(wait, 0.05), MAX_WAIT_SLICE_SECONDS) * (1 + random.random() * 0.2)
            self.waited_seconds += wait
            await asyncio.sleep(wait)

    async def close(self):
        storage = self.storage
        if isinstance(storage, RedisStorage):
            client = getattr(getattr(storage, "bridge", None), "storage", None)
            closer = getattr(client, "aclose", None) or getattr(client, "close", None)
            if closer is not None:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
