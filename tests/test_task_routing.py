"""Task routing: generation runs go to the `generation` queue, every other task to `default`, and the test worker
takes both."""
import pytest

from baize_eval.celery import app
from collection import tasks
from tests.processes import QUEUES, purge_queues

QUEUE_OF = {
    "collection.drive_generation_run": "generation",
    "collection.import_seeds": "default",
    "collection.import_corpus": "default",
    "collection.export_corpus": "default",
    "collection.flag_near_duplicates": "default",
    "collection.review_bulk": "default",
    "collection.recover_stale_jobs": "default",
    "collection.fail_stale_exports": "default",
}


@pytest.fixture
def broker():
    purge_queues()
    with app.connection_for_read() as connection:
        yield connection
    purge_queues()


def test_it_routes_every_task_to_its_queue():
    names = sorted(name for name in app.tasks if name.startswith("collection."))
    assert names == sorted(QUEUE_OF)
    assert {name: app.amqp.router.route({}, name)["queue"].name for name in names} == QUEUE_OF


def test_it_has_the_test_worker_take_every_queue():
    assert set(QUEUE_OF.values()) <= set(QUEUES)


@pytest.mark.parametrize("task, args, queue, other", [
    (tasks.drive_generation_run, (0,), "generation", "default"),
    (tasks.import_seeds, (0,), "default", "generation"),
])
def test_it_puts_the_message_on_its_queue_in_the_broker(broker, task, args, queue, other):
    assert not app.conf.task_always_eager
    task.apply_async(args)
    with broker.SimpleQueue(queue, no_ack=True) as there:
        assert there.get(timeout=5).headers["task"] == task.name
    with broker.SimpleQueue(other, no_ack=True) as elsewhere, pytest.raises(elsewhere.Empty):
        elsewhere.get(timeout=0.5)
