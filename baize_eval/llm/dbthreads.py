"""A few threads that do the database work of an asyncio job (usage ledger, claims, saves).

What a user gets: a run with 64 requests in flight uses a handful of database connections, not 64. Django's ORM
is synchronous and keeps one connection per thread; coroutines hand their ORM work to these threads and await the
result. Each thread closes its own connection when the pool stops, so a finished run leaves none open.
"""
import asyncio
import queue
import threading

from django.db import connections

_STOP = object()


class DatabaseThreads:
    def __init__(self, size=4, *, name="db"):
        self.size = max(1, int(size))
        self._jobs = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(self.size)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, fn, /, *args, **kwargs):
        """Run fn(*args, **kwargs) on a database thread and return its result (or raise its exception)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, args, kwargs, future, loop))
        return await future

    def stop(self):
        """Finish queued work, close every thread's connection, and wait for the threads to end."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()

    def _serve(self):
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                fn, args, kwargs, future, loop = job
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    _resolve(loop, future, exc=exc)
                else:
                    _resolve(loop, future, result=result)
        finally:
            connections.close_all()


def _resolve(loop, future, result=None, exc=None):
    def settle():
        if future.done():  # the awaiting coroutine was cancelled
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # the loop has closed: nobody is waiting any more
