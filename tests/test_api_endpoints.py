"""API: LLM endpoints and the price table — reviewers read, admins write, and no API key ever comes back."""
import pytest

from baize_eval.llm.models import Endpoint, ModelPrice
from tests.factories import make_price

SECRET = "sk-test-do-not-leak-0123456789"


@pytest.fixture
def endpoint(db, monkeypatch):
    monkeypatch.setenv("H6_TEST_LLM_KEY", SECRET)
    return Endpoint.objects.create(name="openai", base_url="https://api.example.test/v1", api_key_env="H6_TEST_LLM_KEY")


@pytest.fixture
def price(db):
    return make_price("gpt-test", prompt="0.50", completion="1.50")


def send(client, method, url, data=None):
    return getattr(client, method)(url, data or {}, content_type="application/json")


READS = ["/api/endpoints/", "/api/endpoints/{e}/", "/api/model-prices/", "/api/model-prices/{p}/"]
WRITES = [
    ("post", "/api/endpoints/", {"name": "vllm", "base_url": "http://127.0.0.1:8001/v1"}),
    ("patch", "/api/endpoints/{e}/", {"requests_per_minute": 5}),
    ("put", "/api/endpoints/{e}/", {"name": "openai", "base_url": "http://evil.test/v1"}),
    ("post", "/api/model-prices/", {"model": "m2", "prompt_usd_per_mtok": "1", "completion_usd_per_mtok": "2"}),
    ("patch", "/api/model-prices/{p}/", {"prompt_usd_per_mtok": "9"}),
    ("delete", "/api/model-prices/{p}/", None),
]


@pytest.mark.parametrize("url", READS)
def test_it_lets_reviewers_read_and_refuses_others(client, as_reviewer, as_rater, as_outsider, endpoint, price, url):
    url = url.format(e=endpoint.pk, p=price.pk)
    assert as_reviewer.get(url).status_code == 200
    assert client.get(url).status_code == 401
    assert as_rater.get(url).status_code == 403
    assert as_outsider.get(url).status_code == 403


@pytest.mark.parametrize("method,url,data", WRITES)
def test_it_lets_only_admins_write(client, as_reviewer, as_rater, as_outsider, endpoint, price, method, url, data):
    url = url.format(e=endpoint.pk, p=price.pk)
    assert send(client, method, url, data).status_code == 401
    for who in (as_reviewer, as_rater, as_outsider):
        assert send(who, method, url, data).status_code == 403
    endpoint.refresh_from_db()
    price.refresh_from_db()
    assert (endpoint.base_url, endpoint.requests_per_minute) == ("https://api.example.test/v1", 0)
    assert str(price.prompt_usd_per_mtok) == "0.500000"
    assert Endpoint.objects.count() == 1 and ModelPrice.objects.count() == 1


def test_it_never_returns_the_key_only_its_variable_and_whether_it_is_set(as_admin, endpoint, monkeypatch):
    listing = as_admin.get("/api/endpoints/")
    detail = as_admin.get(f"/api/endpoints/{endpoint.pk}/")
    for response in (listing, detail):
        assert SECRET.encode() not in response.content
    body = detail.json()
    assert (body["api_key_env"], body["has_key"]) == ("H6_TEST_LLM_KEY", True)
    assert "api_key" not in body
    monkeypatch.delenv("H6_TEST_LLM_KEY")
    assert as_admin.get(f"/api/endpoints/{endpoint.pk}/").json()["has_key"] is False
    updated = send(as_admin, "patch", f"/api/endpoints/{endpoint.pk}/", {"timeout_seconds": 30})
    assert SECRET.encode() not in updated.content


def test_it_creates_and_updates_an_endpoint_as_admin(as_admin, db):
    response = send(as_admin, "post", "/api/endpoints/", {"name": "vllm", "base_url": "http://127.0.0.1:8001/v1",
                                                           "api_key_env": "", "requests_per_minute": 600})
    assert response.status_code == 201, response.json()
    created = Endpoint.objects.get(name="vllm")
    assert (created.requests_per_minute, created.has_key) == (600, False)
    response = send(as_admin, "patch", f"/api/endpoints/{created.pk}/", {"tokens_per_minute": 90000})
    assert response.status_code == 200
    created.refresh_from_db()
    assert created.tokens_per_minute == 90000


@pytest.mark.parametrize("data,field", [
    ({"name": "x", "base_url": "not a url"}, "base_url"),
    ({"name": "x", "base_url": "http://localhost:8001/v1", "api_key_env": "MY KEY"}, "api_key_env"),
    ({"name": "x", "base_url": "http://localhost:8001/v1", "api_key_env": "SECRET_KEY"}, "api_key_env"),
    ({"name": "x", "base_url": "http://localhost:8001/v1", "api_key_env": "database_url"}, "api_key_env"),
    ({"name": "x", "base_url": "http://localhost:8001/v1", "timeout_seconds": 0}, "timeout_seconds"),
    ({"name": "openai", "base_url": "http://localhost:8001/v1"}, "name"),
])
def test_it_names_the_field_of_a_bad_endpoint(as_admin, endpoint, data, field):
    response = send(as_admin, "post", "/api/endpoints/", data)
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert Endpoint.objects.count() == 1


def test_it_cannot_delete_an_endpoint(as_admin, endpoint):
    assert send(as_admin, "delete", f"/api/endpoints/{endpoint.pk}/").status_code == 405
    assert Endpoint.objects.filter(pk=endpoint.pk).exists()


def test_it_manages_the_price_table_as_admin(as_admin, as_reviewer, price):
    response = send(as_admin, "post", "/api/model-prices/", {"model": "llama-3-8b", "prompt_usd_per_mtok": "0.05",
                                                              "completion_usd_per_mtok": "0.08"})
    assert response.status_code == 201, response.json()
    assert send(as_admin, "patch", f"/api/model-prices/{price.pk}/", {"completion_usd_per_mtok": "2.25"}).status_code == 200
    price.refresh_from_db()
    assert str(price.completion_usd_per_mtok) == "2.250000"
    listing = as_reviewer.get("/api/model-prices/?model=llama").json()["results"]
    assert [(p["model"], p["prompt_usd_per_mtok"]) for p in listing] == [("llama-3-8b", "0.050000")]
    bad = send(as_admin, "post", "/api/model-prices/", {"model": "neg", "prompt_usd_per_mtok": "-1"})
    assert bad.status_code == 400 and "prompt_usd_per_mtok" in bad.json()
    assert send(as_admin, "delete", f"/api/model-prices/{price.pk}/").status_code == 204
    assert not ModelPrice.objects.filter(pk=price.pk).exists()
