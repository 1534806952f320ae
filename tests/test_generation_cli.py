"""`manage.py selfchat`: prints the run id, follows the run with --wait through a real worker, and exits by outcome
(0 succeeded, 1 failed, 2 cancelled); bad options are named."""
import io
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from baize_eval.llm.models import Endpoint
from collection.models import Dialogue, GenerationRun
from collection.services import generation_run_cancel
from tests.factories import make_endpoint, make_seed_set, make_seeds
from tests.fake_openai import Reply
from tests.processes import celery_worker, fake_openai, start_worker  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def seeds():
    seed_set = make_seed_set("garden")
    make_seeds(seed_set, [f"How do I grow plant number {i}?" for i in range(12)])
    return seed_set


def selfchat(*args):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        call_command("selfchat", *args, stdout=out, stderr=err)
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.worker
def test_it_prints_the_run_id_and_waits_until_the_run_succeeds(seeds, celery_worker, fake_openai):
    code, out, err = selfchat("--set", "garden", "--model", "fake-model", "--base-url", fake_openai.base_url,
                              "--concurrency", "4", "--temperature", "0.2", "--wait", "--poll", "0.2")
    run = GenerationRun.objects.get()
    assert code == 0, err + celery_worker.log()
    assert out.strip() == str(run.pk)
    assert run.status == "succeeded" and run.done == 12 and Dialogue.objects.filter(run=run).count() == 12
    assert run.params == {"temperature": 0.2}
    assert f"Run {run.pk} succeeded: 12 done, 0 failed" in err
    assert "no price for model 'fake-model'" in err
    # --base-url without --endpoint made an endpoint for that URL; the next run reuses it.
    endpoint = Endpoint.objects.get()
    assert endpoint.base_url == fake_openai.base_url and run.endpoint == endpoint
    code, out, _ = selfchat("--set", "garden", "--model", "fake-model", "--base-url", fake_openai.base_url,
                            "--sample", "3", "--mode", "turns", "--max-turns", "2")
    assert code == 0 and Endpoint.objects.count() == 1
    second = GenerationRun.objects.get(pk=int(out))
    assert (second.mode, second.items_total, second.max_turns) == ("turns", 3, 2)


@pytest.mark.worker
def test_it_exits_1_when_the_run_failed(seeds, celery_worker, fake_openai):
    fake_openai.script = lambda request, index: Reply(status=400, error_message="no such model")
    code, _, err = selfchat("--set", "garden", "--model", "nope", "--base-url", fake_openai.base_url, "--wait",
                            "--poll", "0.2")
    assert code == 1
    run = GenerationRun.objects.get()
    assert run.status == "failed" and run.failed == 12
    assert "all 12 seed(s) failed" in err


@pytest.mark.worker
def test_it_exits_2_when_the_run_is_cancelled(seeds, celery_worker, fake_openai):
    fake_openai.latency = 0.5

    def cancel_soon():
        try:
            generation_run_cancel(run=GenerationRun.objects.get())
        finally:
            connection.close()  # this thread's own connection

    timer = threading.Timer(1.5, cancel_soon)
    timer.start()
    code, _, err = selfchat("--set", "garden", "--model", "fake-model", "--base-url", fake_openai.base_url,
                            "--concurrency", "1", "--wait", "--poll", "0.2")
    timer.join()
    assert code == 2
    assert GenerationRun.objects.get().status == "cancelled" and "cancelled" in err


@pytest.mark.parametrize("args, message", [
    (["--set", "missing", "--model", "m"], "--set: no seed set named 'missing'"),
    (["--set", "garden", "--model", "m", "--endpoint", "nowhere"], "--endpoint: no endpoint named 'nowhere'"),
    (["--set", "garden", "--model", "m", "--base-url", "ftp://example.com"], "--base-url: 'ftp://example.com' is not"),
    (["--set", "garden", "--model", "m", "--endpoint", "local", "--base-url", "http://other:1/v1"], "--base-url: endpoint 'local'"),
    (["--set", "garden", "--model", "m", "--endpoint", "local", "--concurrency", "0"], "--concurrency: must be between"),
    (["--set", "garden", "--model", "m", "--endpoint", "local", "--params", "{oops"], "--params: not JSON"),
    (["--set", "garden", "--model", "m", "--endpoint", "local", "--template", "ghost"], "--template: no template named"),
    (["--set", "garden", "--model", "m", "--endpoint", "local", "--budget-usd", "-2"], "--budget-usd: must not be negative"),
])
def test_it_names_the_bad_option(seeds, args, message):
    make_endpoint("http://127.0.0.1:9/v1", name="local")
    with pytest.raises(CommandError) as error:
        call_command("selfchat", *args, stdout=io.StringIO(), stderr=io.StringIO())
    assert str(error.value).startswith(message)
    assert not GenerationRun.objects.exists()
