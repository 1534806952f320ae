"""API: seed sets and seeds — list, create, retrieve, filters, and who may call them."""
import pytest

from collection.models import SeedSet
from tests.factories import make_dialogue, make_seed_set, make_seeds

ENDPOINTS = [
    ("get", "/api/seed-sets/"),
    ("post", "/api/seed-sets/"),
    ("get", "/api/seed-sets/{set}/"),
    ("get", "/api/seed-sets/{set}/seeds/"),
    ("get", "/api/seeds/"),
    ("get", "/api/seeds/{seed}/"),
]


@pytest.fixture
def garden(db):
    seed_set = make_seed_set("garden", source="quora", tags=["plants"])
    seeds = make_seeds(seed_set, ["How do I keep basil alive?", "When to repot a fern?"])
    return seed_set, seeds


def call(client, method, url, garden, data=None):
    seed_set, seeds = garden
    url = url.format(set=seed_set.pk, seed=seeds[0].pk)
    return getattr(client, method)(url, data or {}, content_type="application/json")


@pytest.mark.parametrize("method,url", ENDPOINTS)
def test_it_asks_anonymous_callers_to_authenticate(client, garden, method, url):
    response = call(client, method, url, garden, {"name": "x"})
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("method,url", ENDPOINTS)
def test_it_forbids_raters_and_users_without_a_role(as_rater, as_outsider, garden, method, url):
    for client in (as_rater, as_outsider):
        response = call(client, method, url, garden, {"name": "x"})
        assert response.status_code == 403
    assert not SeedSet.objects.filter(name="x").exists()


def test_it_lists_seed_sets_with_counts(as_reviewer, garden):
    make_dialogue(garden[0])
    make_seed_set("medquad", source="medquad")
    response = as_reviewer.get("/api/seed-sets/")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    first = body["results"][0]
    assert (first["name"], first["seed_count"], first["dialogue_count"], first["tags"]) == ("garden", 2, 1, ["plants"])
    assert body["results"][1]["seed_count"] == 0


def test_it_filters_seed_sets_by_source_tag_and_name(as_reviewer, garden):
    make_seed_set("medquad", source="medquad", tags=["health"])
    assert [r["name"] for r in as_reviewer.get("/api/seed-sets/?source=medquad").json()["results"]] == ["medquad"]
    assert [r["name"] for r in as_reviewer.get("/api/seed-sets/?tag=plants").json()["results"]] == ["garden"]
    assert [r["name"] for r in as_reviewer.get("/api/seed-sets/?name=MED").json()["results"]] == ["medquad"]
    assert [r["name"] for r in as_reviewer.get("/api/seed-sets/?ordering=-name").json()["results"]] == ["medquad", "garden"]


def test_it_creates_a_seed_set(as_reviewer, reviewer):
    response = as_reviewer.post("/api/seed-sets/", {"name": "stack", "source": "stackoverflow", "tags": ["code", "py"],
                                                     "description": "titles"}, content_type="application/json")
    assert response.status_code == 201, response.json()
    assert response.json()["seed_count"] == 0
    seed_set = SeedSet.objects.get(name="stack")
    assert (seed_set.source, seed_set.tags, seed_set.created_by) == ("stackoverflow", ["code", "py"], reviewer)


def test_it_names_the_field_when_a_seed_set_is_invalid(as_reviewer, garden):
    response = as_reviewer.post("/api/seed-sets/", {"name": "garden", "tags": "plants"}, content_type="application/json")
    assert response.status_code == 400
    assert set(response.json()) == {"name", "tags"}
    assert SeedSet.objects.count() == 1


def test_it_retrieves_a_seed_set(as_admin, garden):
    response = as_admin.get(f"/api/seed-sets/{garden[0].pk}/")
    assert response.status_code == 200
    assert response.json()["seed_count"] == 2


def test_it_lists_the_seeds_of_a_set(as_reviewer, garden):
    other = make_seed_set("other")
    make_seeds(other, ["Unrelated"])
    nested = as_reviewer.get(f"/api/seed-sets/{garden[0].pk}/seeds/").json()
    filtered = as_reviewer.get(f"/api/seeds/?seed_set={garden[0].pk}").json()
    assert [s["text"] for s in nested["results"]] == ["How do I keep basil alive?", "When to repot a fern?"]
    assert nested["results"] == filtered["results"]
    assert as_reviewer.get("/api/seeds/").json()["count"] == 3
    assert as_reviewer.get("/api/seeds/?q=fern").json()["count"] == 1


def test_it_answers_404_for_the_seeds_of_a_missing_set(as_reviewer, db):
    assert as_reviewer.get("/api/seed-sets/999999/seeds/").status_code == 404


def test_it_paginates_seeds_with_a_capped_limit(as_reviewer, garden):
    make_seeds(garden[0], [f"question {i}" for i in range(10)])
    page = as_reviewer.get("/api/seeds/?limit=5&offset=5").json()
    assert page["count"] == 12 and len(page["results"]) == 5 and page["next"] and page["previous"]
    assert len(as_reviewer.get("/api/seeds/?limit=100000").json()["results"]) == 12


def test_it_lists_seed_sets_in_a_fixed_number_of_queries(as_reviewer, garden, django_assert_max_num_queries):
    for i in range(20):
        make_seed_set(f"set {i}")
    with django_assert_max_num_queries(6):
        assert as_reviewer.get("/api/seed-sets/?limit=100").status_code == 200
