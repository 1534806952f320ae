"""Run pages: list, new-run form, run page with progress and failed seeds, progress.json and the action buttons;
each allowed for reviewers and admins, refused to anonymous users (login), raters and outsiders (403)."""
import pytest
from django.test import Client

from baize_eval.llm.models import Endpoint
from collection.models import GenerationItem, GenerationRun
from collection.services import generation_run_start
from tests.factories import make_endpoint, make_price, make_seed_set, make_seeds, make_template

pytestmark = pytest.mark.django_db

SECRET = "sk-live-DoNotShowThis0123456789"


@pytest.fixture
def run():
    seed_set = make_seed_set("garden")
    make_seeds(seed_set, ["How do I keep basil alive?", "<script>alert('seed')</script> Why do tomatoes split?",
                          "When should I repot a fern?"])
    endpoint = make_endpoint("http://127.0.0.1:9/v1")
    template = make_template("transcript")
    return generation_run_start(seed_set=seed_set, endpoint=endpoint, model="fake-model", template=template,
                                name="first run", params={"temperature": 0.5})


def fail_one(run, error):
    item = GenerationItem.objects.filter(run=run).order_by("id")[1]
    GenerationItem.objects.filter(pk=item.pk).update(status="failed", error=error, attempts=3)
    GenerationRun.objects.filter(pk=run.pk).update(failed=1)
    return item


PAGES = ["/runs/", "/runs/new/", "/runs/{id}/", "/runs/{id}/progress.json"]
ACTIONS = ["pause", "resume", "cancel", "retry-failed", "budget"]


@pytest.mark.parametrize("url", PAGES)
def test_it_sends_anonymous_users_to_the_login_page(run, url):
    response = Client().get(url.format(id=run.pk))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("url", PAGES)
def test_it_refuses_raters_and_outsiders(run, url, as_rater, as_outsider):
    assert as_rater.get(url.format(id=run.pk)).status_code == 403
    assert as_outsider.get(url.format(id=run.pk)).status_code == 403


@pytest.mark.parametrize("url", PAGES)
def test_it_shows_reviewers_and_admins_every_page(run, url, as_reviewer, as_admin):
    assert as_reviewer.get(url.format(id=run.pk)).status_code == 200
    assert as_admin.get(url.format(id=run.pk)).status_code == 200


@pytest.mark.parametrize("action", ACTIONS)
def test_it_refuses_actions_to_anonymous_users_raters_and_outsiders(run, action, as_rater, as_outsider):
    url = f"/runs/{run.pk}/{action}/"
    response = Client().post(url)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert as_rater.post(url).status_code == 403
    assert as_outsider.post(url).status_code == 403
    run.refresh_from_db()
    assert run.status == "queued"


@pytest.mark.parametrize("action", ACTIONS)
def test_it_takes_actions_only_as_post(run, action, as_reviewer):
    assert as_reviewer.get(f"/runs/{run.pk}/{action}/").status_code == 405


def test_it_lists_runs_with_their_progress(run, as_reviewer):
    page = as_reviewer.get("/runs/").content.decode()
    assert f'href="/runs/{run.pk}/"' in page and "first run" in page
    assert "0/3" in page and "fake-model" in page


def test_it_starts_a_run_from_the_form(as_reviewer, reviewer):
    seed_set = make_seed_set("herbs")
    make_seeds(seed_set, ["Mint in pots?", "Sage in winter?", "Thyme from seed?", "Dill and bolting?"])
    endpoint = make_endpoint("http://127.0.0.1:9/v1")
    template = make_template("turns", name="turns-tpl")
    response = as_reviewer.post("/runs/new/", {
        "seed_set": seed_set.pk, "endpoint": endpoint.pk, "model": "my-model", "mode": "turns",
        "template": template.pk, "name": "herbs", "temperature": "0.9", "max_tokens": "300",
        "params": '{"top_p": 0.95}', "max_turns": "3", "concurrency": "16", "budget_usd": "1.50",
        "budget_tokens": "", "sample_size": "2", "sample_seed": "7", "language": "en", "min_turns": "2",
    })
    run = GenerationRun.objects.get(name="herbs")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert (run.mode, run.model, run.max_turns, run.concurrency, run.created_by) == ("turns", "my-model", 3, 16, reviewer)
    assert run.params == {"top_p": 0.95, "temperature": 0.9, "max_tokens": 300}
    assert str(run.budget_usd) == "1.5000" and run.budget_tokens is None
    assert run.items_total == 2 and run.items.count() == 2 and run.status == "queued"


def test_it_names_the_field_when_a_run_cannot_start(as_reviewer):
    seed_set = make_seed_set("herbs")
    make_seeds(seed_set, ["Mint in pots?"])
    endpoint = make_endpoint("http://127.0.0.1:9/v1")
    template = make_template("transcript")
    response = as_reviewer.post("/runs/new/", {
        "seed_set": seed_set.pk, "endpoint": endpoint.pk, "model": "m", "mode": "turns", "template": template.pk,
        "max_turns": "4", "concurrency": "8", "sample_seed": "0", "language": "en", "min_turns": "2",
        "params": "{not json",
    })
    assert response.status_code == 200
    form = response.context["form"]
    assert "params" in form.errors and "Not valid JSON" in form.errors["params"][0]
    assert not GenerationRun.objects.exists()
    response = as_reviewer.post("/runs/new/", {
        "seed_set": seed_set.pk, "endpoint": endpoint.pk, "model": "m", "mode": "turns", "template": template.pk,
        "max_turns": "4", "concurrency": "8", "sample_seed": "0", "language": "en", "min_turns": "2",
    })
    assert "is a transcript template, not a turns one" in response.context["form"].errors["template"][0]
    assert not GenerationRun.objects.exists()


def test_it_shows_progress_failed_seeds_and_settings_escaped(run, as_reviewer):
    fail_one(run, "after 3 attempt(s): HTTP 500: <img src=x onerror=alert(1)>")
    page = as_reviewer.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="run-progress"' in page and f'data-progress-url="/runs/{run.pk}/progress.json"' in page
    assert "Failed seeds (1)" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;seed&#x27;)&lt;/script&gt;" in page and "<script>alert(" not in page
    assert 'id="retry-failed"' in page and 'id="pause"' in page and 'id="cancel"' in page
    assert 'id="resume"' not in page
    assert 'id="no-price"' in page  # no price for fake-model yet: cost counts as 0
    make_price("fake-model")
    assert 'id="no-price"' not in as_reviewer.get(f"/runs/{run.pk}/").content.decode()


def test_it_says_when_calls_had_estimated_usage(run, as_reviewer):
    assert 'id="usage-estimated"' not in as_reviewer.get(f"/runs/{run.pk}/").content.decode()
    assert as_reviewer.get(f"/runs/{run.pk}/progress.json").json()["estimated_calls"] == 0
    GenerationRun.objects.filter(pk=run.pk).update(calls=3, estimated_calls=1)
    page = as_reviewer.get(f"/runs/{run.pk}/").content.decode()
    assert "1 call had no usage from the server: their tokens and cost are estimated, 4 characters a token." in page
    assert as_reviewer.get(f"/runs/{run.pk}/progress.json").json()["estimated_calls"] == 1


def test_it_never_shows_the_api_key(run, as_reviewer, monkeypatch):
    monkeypatch.setenv("BAIZE_PAGE_KEY", SECRET)
    Endpoint.objects.filter(pk=run.endpoint_id).update(api_key_env="BAIZE_PAGE_KEY")
    for url in (f"/runs/{run.pk}/", "/runs/new/", "/runs/", f"/runs/{run.pk}/progress.json"):
        body = as_reviewer.get(url).content.decode()
        assert SECRET not in body and "DoNotShowThis" not in body
    assert "key: set" in as_reviewer.get(f"/runs/{run.pk}/").content.decode()


def test_it_serves_progress_as_json(run, as_reviewer):
    fail_one(run, "boom")
    data = as_reviewer.get(f"/runs/{run.pk}/progress.json").json()
    assert (data["total"], data["done"], data["failed"], data["in_flight"], data["pending"]) == (3, 0, 1, 0, 2)
    assert data["status"] == "queued" and data["tokens"] == 0 and data["cost_usd"] == "0.00000000"
    assert set(data["filters"]) >= {"malformed", "too_few_turns", "truncated", "refusal", "near_duplicate"}
    assert "eta_seconds" in data and "rate_per_s" in data


def test_it_pauses_resumes_cancels_and_retries_from_the_buttons(run, as_reviewer):
    response = as_reviewer.post(f"/runs/{run.pk}/pause/")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    run.refresh_from_db()
    assert run.status == "paused"
    page = as_reviewer.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="resume"' in page and 'id="pause"' not in page
    as_reviewer.post(f"/runs/{run.pk}/resume/")
    run.refresh_from_db()
    assert run.status == "queued"

    fail_one(run, "boom")
    as_reviewer.post(f"/runs/{run.pk}/retry-failed/")
    run.refresh_from_db()
    assert run.failed == 0 and not GenerationItem.objects.filter(run=run, status="failed").exists()

    as_reviewer.post(f"/runs/{run.pk}/cancel/")
    run.refresh_from_db()
    assert run.status == "cancelled"
    response = as_reviewer.post(f"/runs/{run.pk}/resume/", follow=True)
    assert "only a paused run can be resumed" in response.content.decode()


def test_it_changes_the_budget(run, as_reviewer):
    as_reviewer.post(f"/runs/{run.pk}/budget/", {"budget_usd": "2.5", "budget_tokens": "1000"})
    run.refresh_from_db()
    assert (str(run.budget_usd), run.budget_tokens) == ("2.5000", 1000)
    response = as_reviewer.post(f"/runs/{run.pk}/budget/", {"budget_usd": "-1", "budget_tokens": ""}, follow=True)
    assert "Budget not changed" in response.content.decode()
    run.refresh_from_db()
    assert str(run.budget_usd) == "2.5000"


def test_it_requires_the_csrf_token_for_actions(run, reviewer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    assert client.post(f"/runs/{run.pk}/pause/").status_code == 403
    run.refresh_from_db()
    assert run.status == "queued"
