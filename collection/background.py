"""Work beside the main thread: iterate a slow source (database pages, file batches) in a helper thread while the
caller processes what it already has. Waiting for the database or the disk releases the interpreter, so the two
overlap."""
import queue
import threading

from django.db import connections


def read_ahead(items, *, depth=2, name="read-ahead"):
    """Iterate `items` in a helper thread, at most `depth` items ahead, handing them over a bounded queue. The
    thread's exceptions are raised here; leaving the loop early stops the thread. The thread closes `items` (a
    generator) and its own database connection, if it opened one."""
    handover = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message):
        while not stop.is_set():
            try:
                handover.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            connections.close_all()  # this thread's own connections

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handover.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
