"""A local HTTP server that speaks the OpenAI chat-completions protocol: the outside world, for tests and benchmarks.

    server = FakeOpenAI(latency=0.5).start()      # a thread with its own event loop, on an ephemeral port
    server.base_url                               # "http://127.0.0.1:PORT/v1"
    server.script = lambda request, n: Reply(...) # what to answer (default: a plausible self-chat)
    server.queue(Reply(status=429, headers={"Retry-After": "1"}), Reply(status=500))   # served first, in order
    server.ledger                                 # every response it sent, with its usage
    server.stop()

Replies can be delayed (latency), be errors with headers (429 + Retry-After, 500), hang past the client's timeout
(nothing is sent and nothing is charged), or be malformed bodies. Usage is counted in whitespace words, so tests
can predict it. Runs standalone too:  python tests/fake_openai.py --port 8011 --latency 0.5
"""
import argparse
import asyncio
import itertools
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

TOPIC = re.compile(r"topic: '(.*?)'", re.S)


@dataclass
class Reply:
    text: str = ""
    finish_reason: str = "stop"
    delay: float | None = None  # seconds before answering; None: the server's latency
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: str | None = None  # a raw body instead of a chat completion (malformed responses)
    content_type: str = "application/json"
    hang: bool = False  # never answer (the client times out)
    usage: bool = True  # False: a completion without usage
    error_message: str = "fake error"


def count_words(text):
    return len(str(text or "").split())


def topic_of(request):
    """The seed a self-chat request is about (the templates say "topic: '...'")."""
    for message in request.get("messages", []):
        found = TOPIC.search(str(message.get("content") or ""))
        if found:
            return found.group(1)
    return "something"


def selfchat_script(request, index, *, human_turns=3):
    """A plausible self-chat: a transcript for one-call requests; a human message or an answer in turns mode."""
    topic = topic_of(request)
    stop = request.get("stop")
    messages = request.get("messages", [])
    if stop:  # the human simulator: stops at the AI marker
        prompt = str(messages[-1].get("content") or "") if messages else ""
        asked = prompt.count("[|AI|]")
        if asked >= human_turns:
            return Reply(text="[|Human|] [|END|]")
        return Reply(text=f"[|Human|] Question {asked + 1} about {topic}?")
    if messages and messages[0].get("role") == "system":  # the clean answering call
        question = str(messages[-1].get("content") or "")
        return Reply(text=f"Here is an answer to: {question}")
    lines = []
    for turn in range(1, human_turns + 1):
        lines.append(f"[|Human|] Question {turn} about {topic}?")
        lines.append(f"[|AI|] Answer {turn} about {topic}, explained in a few plain words.")
    lines.append("[|Human|] And one more question that gets cut")
    return Reply(text="\n".join(lines))


class FakeOpenAI:
    def __init__(self, *, latency=0.0, script=None, host="127.0.0.1", port=0):
        self.latency = latency
        self.script = script or selfchat_script
        self.host = host
        self.port = port
        self.ledger = []  # one entry per response actually sent
        self.requests = []  # every request body received, in order
        self.in_flight = 0
        self.max_in_flight = 0
        self._queued = deque()
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._runner = None
        self._ready = threading.Event()

    # --- control -----------------------------------------------------------------------------------------
    @property
    def base_url(self):
        return f"http://{self.host}:{self.port}/v1"

    def queue(self, *replies):
        """Serve these replies first, one per request, before the script answers again."""
        with self._lock:
            self._queued.extend(replies)

    def usage_totals(self):
        with self._lock:
            prompt = sum(entry["prompt_tokens"] for entry in self.ledger)
            completion = sum(entry["completion_tokens"] for entry in self.ledger)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "responses": len(self.ledger)}

    def reset(self):
        with self._lock:
            self.ledger.clear()
            self.requests.clear()
            self._queued.clear()
            self.max_in_flight = 0

    def start(self):
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    def stop(self):
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            future.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    # --- server ------------------------------------------------------------------------------------------
    def _app(self):
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        return app

    def _serve(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start_site())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start_site(self):
        # handler_cancellation: a client that gave up (timeout) cancels the handler, so nothing is charged.
        self._runner = web.AppRunner(self._app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _models(self, request):
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _completions(self, request):
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        index = next(self._counter)
        with self._lock:
            self.requests.append(body)
            reply = self._queued.popleft() if self._queued else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply is None:
                reply = self.script(body, index)
            if isinstance(reply, str):
                reply = Reply(text=reply)
            if reply.hang:
                await asyncio.sleep(3600)
            delay = self.latency if reply.delay is None else reply.delay
            if delay:
                await asyncio.sleep(delay)
            return self._respond(body, reply, index)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _respond(self, body, reply, index):
        model = body.get("model", "fake-model")
        entry = {"index": index, "status": reply.status, "model": model, "prompt_tokens": 0, "completion_tokens": 0,
                 "at": time.time()}
        if reply.body is not None:
            response = web.Response(text=reply.body, status=reply.status, headers=reply.headers,
                                    content_type=reply.content_type)
        elif reply.status != 200:
            response = web.json_response(
                {"error": {"message": reply.error_message, "type": "fake_error", "code": str(reply.status)}},
                status=reply.status, headers=reply.headers,
            )
        else:
            prompt_tokens = sum(count_words(m.get("content")) for m in body.get("messages", []))
            completion_tokens = count_words(reply.text)
            payload = {
                "id": f"chatcmpl-fake-{index}", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": reply.finish_reason}],
            }
            if reply.usage:
                payload["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                    "total_tokens": prompt_tokens + completion_tokens}
                entry.update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            response = web.json_response(payload, headers=reply.headers)
        with self._lock:
            self.ledger.append(entry)
        return response


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds before each answer")
    args = parser.parse_args()
    server = FakeOpenAI(latency=args.latency, host=args.host, port=args.port).start()
    print(f"fake OpenAI server on {server.base_url} (latency {args.latency}s); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
