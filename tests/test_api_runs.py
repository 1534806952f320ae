"""API: generation runs — start one, read its progress, pause/resume/cancel/retry-failed, and who may."""
import pytest

from collection.models import GenerationItem, GenerationRun
from tests.factories import make_endpoint, make_seed_set, make_seeds, make_template


@pytest.fixture
def setup(db):
    seed_set = make_seed_set("garden")
    make_seeds(seed_set, ["How do I keep basil alive?", "When to repot a fern?", "Why do leaves yellow?"])
    return {"seed_set": seed_set, "endpoint": make_endpoint(), "template": make_template()}


def start(client, setup, **extra):
    data = {"seed_set": setup["seed_set"].pk, "endpoint": setup["endpoint"].pk, "model": "fake-model",
            "template": setup["template"].pk, **extra}
    return client.post("/api/runs/", data, content_type="application/json")


def act(client, run_id, verb):
    return client.post(f"/api/runs/{run_id}/{verb}/")


def test_it_refuses_anonymous_raters_and_outsiders(client, as_rater, as_outsider, reviewer, setup):
    from collection.services import generation_run_start

    run = generation_run_start(seed_set=setup["seed_set"], endpoint=setup["endpoint"], model="m",
                               template=setup["template"], created_by=reviewer)
    for who, code in ((client, 401), (as_rater, 403), (as_outsider, 403)):
        assert who.get("/api/runs/").status_code == code
        assert who.get(f"/api/runs/{run.pk}/").status_code == code
        assert start(who, setup).status_code == code
        for verb in ("pause", "resume", "cancel", "retry-failed", "budget"):
            assert act(who, run.pk, verb).status_code == code
        assert who.get(f"/api/runs/{run.pk}/failed/").status_code == code
    run.refresh_from_db()
    assert (run.status, run.budget_usd) == ("queued", None)
    assert GenerationRun.objects.count() == 1


def test_it_starts_a_run_with_an_item_per_seed(as_reviewer, reviewer, setup):
    response = start(as_reviewer, setup, params={"temperature": 0.7, "max_tokens": 256, "stop": ["[|END|]"]},
                     concurrency=16, budget_usd="1.50", name="first")
    assert response.status_code == 201, response.json()
    body = response.json()
    run = GenerationRun.objects.get(pk=body["id"])
    assert (run.created_by, run.items_total, run.concurrency, str(run.budget_usd)) == (reviewer, 3, 16, "1.5000")
    assert run.params == {"temperature": 0.7, "max_tokens": 256, "stop": ["[|END|]"]}
    assert GenerationItem.objects.filter(run=run).count() == 3
    progress = body["progress"]
    assert (progress["total"], progress["done"], progress["pending"], progress["in_flight"]) == (3, 0, 3, 0)
    assert {"tokens", "cost_usd", "eta_seconds", "filters"} <= set(progress)


def test_it_uses_the_built_in_template_when_none_is_named(as_reviewer, setup):
    response = as_reviewer.post("/api/runs/", {"seed_set": setup["seed_set"].pk, "endpoint": setup["endpoint"].pk,
                                               "model": "m", "mode": "turns"}, content_type="application/json")
    assert response.status_code == 201, response.json()
    assert (response.json()["mode"], GenerationRun.objects.get().template.mode) == ("turns", "turns")


@pytest.mark.parametrize("extra,field", [
    ({"model": ""}, "model"),
    ({"seed_set": 999999}, "seed_set"),
    ({"concurrency": 0}, "concurrency"),
    ({"params": {"temperature": "hot"}}, "params"),
    ({"params": ["temperature"]}, "params"),
    ({"params": {"stop": ["\x00"]}}, "params"),  # found by the fuzz run: jsonb cannot store NUL
    ({"mode": "turns"}, "template"),  # the transcript template cannot drive turns mode
    ({"budget_usd": "-1"}, "budget_usd"),
])
def test_it_names_the_field_of_a_bad_run(as_reviewer, setup, extra, field):
    response = start(as_reviewer, setup, **extra)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not GenerationRun.objects.exists()


def test_it_refuses_a_seed_set_without_seeds(as_reviewer, setup):
    setup["seed_set"] = make_seed_set("empty")
    response = start(as_reviewer, setup)
    assert response.status_code == 400 and "seed_set" in response.json()
    assert not GenerationRun.objects.exists()


def test_it_pauses_resumes_and_cancels(as_reviewer, setup):
    run_id = start(as_reviewer, setup).json()["id"]
    assert act(as_reviewer, run_id, "resume").status_code == 409
    paused = act(as_reviewer, run_id, "pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert act(as_reviewer, run_id, "resume").json()["status"] == "queued"
    assert act(as_reviewer, run_id, "cancel").json()["status"] == "cancelled"
    again = act(as_reviewer, run_id, "cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert GenerationRun.objects.get(pk=run_id).status == "cancelled"


def test_it_puts_failed_seeds_back(as_admin, setup):
    run_id = start(as_admin, setup).json()["id"]
    assert act(as_admin, run_id, "retry-failed").status_code == 409
    item = GenerationItem.objects.filter(run_id=run_id).first()
    GenerationItem.objects.filter(pk=item.pk).update(status="failed", error="HTTP 500 after 6 attempts")
    GenerationRun.objects.filter(pk=run_id).update(failed=1, status="succeeded")
    response = act(as_admin, run_id, "retry-failed")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["failed"]) == ("queued", 0)
    item.refresh_from_db()
    assert item.status == "pending"


def test_it_lists_and_filters_runs_in_few_queries(as_reviewer, reviewer2, setup, django_assert_max_num_queries):
    from collection.services import generation_run_start

    for i in range(10):
        generation_run_start(seed_set=setup["seed_set"], endpoint=setup["endpoint"], model=f"m{i % 2}",
                             template=setup["template"], created_by=reviewer2)
    with django_assert_max_num_queries(5):
        body = as_reviewer.get("/api/runs/?limit=100").json()
    assert body["count"] == 10 and body["results"][0]["created_by"] == "rob"
    assert as_reviewer.get("/api/runs/?model=m1").json()["count"] == 5
    assert as_reviewer.get(f"/api/runs/?seed_set={setup['seed_set'].pk}&status=queued").json()["count"] == 10
    assert as_reviewer.get("/api/runs/?status=running").json()["count"] == 0


def test_it_answers_404_for_a_missing_run(as_reviewer, db):
    assert as_reviewer.get("/api/runs/999999/").status_code == 404
    assert act(as_reviewer, 999999, "pause").status_code == 404


def test_it_lists_failed_seeds_with_their_errors(as_reviewer, setup):
    run_id = start(as_reviewer, setup).json()["id"]
    item = GenerationItem.objects.filter(run_id=run_id).select_related("seed").first()
    GenerationItem.objects.filter(pk=item.pk).update(status="failed", attempts=6, error="HTTP 429 after 6 attempts")
    rows = as_reviewer.get(f"/api/runs/{run_id}/failed/").json()
    assert [(r["seed_text"], r["attempts"], r["error"]) for r in rows] == \
        [(item.seed.text, 6, "HTTP 429 after 6 attempts")]


def test_it_raises_the_budget_and_requeues_a_run_that_stopped_on_it(as_reviewer, setup):
    run_id = start(as_reviewer, setup, budget_tokens=10).json()["id"]
    GenerationRun.objects.filter(pk=run_id).update(status="succeeded", budget_exhausted=True, prompt_tokens=10)
    response = as_reviewer.post(f"/api/runs/{run_id}/budget/", {"budget_tokens": 1000, "budget_usd": "2.5"},
                                content_type="application/json")
    assert response.status_code == 200, response.json()
    run = GenerationRun.objects.get(pk=run_id)
    assert (run.status, run.budget_tokens, str(run.budget_usd)) == ("queued", 1000, "2.5000")
    kept = as_reviewer.post(f"/api/runs/{run_id}/budget/", {"budget_tokens": None}, content_type="application/json")
    assert kept.json()["budget_tokens"] is None and kept.json()["budget_usd"] == "2.5000"
    bad = as_reviewer.post(f"/api/runs/{run_id}/budget/", {"budget_usd": "-3"}, content_type="application/json")
    assert bad.status_code == 400 and "budget_usd" in bad.json()
