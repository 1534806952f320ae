"""API: dialogues — the review queue's filters as query parameters, ordering, one dialogue in full, access."""
import pytest

from collection.models import DialogueFlag
from tests.factories import make_dialogue, make_seed_set, make_seeds

LONG = [
    {"role": "human", "text": "Tell me about ferns."},
    {"role": "ai", "text": "Ferns are vascular plants that reproduce via spores " * 5},
]


@pytest.fixture
def corpus(db):
    garden = make_seed_set("garden")
    kitchen = make_seed_set("kitchen")
    seed = make_seeds(garden, ["How do I keep basil alive indoors?"])[0]
    basil = make_dialogue(garden, seed=seed, generation={"model": "fake-model", "calls": [{"latency_ms": 12}]},
                          raw_output="[|Human|] How do I keep basil alive indoors?", finish_reason="stop")
    fern = make_dialogue(garden, turns=LONG, topic="Ferns", status="approved")
    bread = make_dialogue(kitchen, turns=LONG[:1] + [{"role": "ai", "text": "Knead the dough well."}],
                          topic="Bread", is_flagged=True)
    DialogueFlag.objects.create(dialogue=bread, rule="too_short", reason="2 turns < 4")
    return {"garden": garden, "kitchen": kitchen, "basil": basil, "fern": fern, "bread": bread}


def ids(response):
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


@pytest.mark.parametrize("url", ["/api/dialogues/", "/api/dialogues/{id}/"])
def test_it_refuses_anonymous_raters_and_outsiders(client, as_rater, as_outsider, corpus, url):
    url = url.format(id=corpus["basil"].pk)
    assert client.get(url).status_code == 401
    assert as_rater.get(url).status_code == 403
    assert as_outsider.get(url).status_code == 403


def test_it_lists_dialogues_for_reviewers_and_admins(as_reviewer, as_admin, corpus):
    expected = [corpus["basil"].pk, corpus["fern"].pk, corpus["bread"].pk]
    assert ids(as_reviewer.get("/api/dialogues/")) == expected
    assert ids(as_admin.get("/api/dialogues/")) == expected
    row = as_reviewer.get("/api/dialogues/").json()["results"][2]
    assert (row["topic"], row["flags"], row["is_flagged"], row["num_turns"]) == ("Bread", ["too_short"], True, 2)
    assert "turns" not in row and "raw_output" not in row


def test_it_filters_like_the_review_queue(as_reviewer, corpus):
    c = corpus
    assert ids(as_reviewer.get(f"/api/dialogues/?seed_set={c['kitchen'].pk}")) == [c["bread"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?status=approved")) == [c["fern"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?status=undecided&flag=none")) == [c["basil"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?flag=too_short")) == [c["bread"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?flag=any")) == [c["bread"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?min_turns=3")) == [c["basil"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?max_turns=2&min_length=200")) == [c["fern"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?max_length=60")) == [c["bread"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?q=spores")) == [c["fern"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?q=fertilize")) == [c["basil"].pk]


def test_it_orders_dialogues(as_reviewer, corpus):
    c = corpus
    assert ids(as_reviewer.get("/api/dialogues/?ordering=-length_chars")) == [c["fern"].pk, c["basil"].pk, c["bread"].pk]
    assert ids(as_reviewer.get("/api/dialogues/?ordering=-id&limit=1")) == [c["bread"].pk]


@pytest.mark.parametrize("query,field", [
    ("min_turns=abc", "min_turns"), ("seed_set=-1", "seed_set"), ("status=maybe", "status"), ("q=" + "x" * 501, "q"),
    ("q=basil%00", "q"),  # Postgres cannot hold NUL: a 400, not a 500 from inside the query
])
def test_it_names_the_bad_filter(as_reviewer, corpus, query, field):
    response = as_reviewer.get(f"/api/dialogues/?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_it_shows_one_dialogue_in_full(as_reviewer, corpus):
    response = as_reviewer.get(f"/api/dialogues/{corpus['basil'].pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["turns"] == body["original_turns"] and len(body["turns"]) == 4
    assert body["seed_text"] == "How do I keep basil alive indoors?"
    assert body["seed_set_name"] == "garden"
    assert body["generation"]["calls"] == [{"latency_ms": 12}]
    assert (body["version"], body["status"], body["finish_reason"]) == (1, "undecided", "stop")
    assert body["raw_output"].startswith("[|Human|]")
    flagged = as_reviewer.get(f"/api/dialogues/{corpus['bread'].pk}/").json()
    assert flagged["flags"] == [{"rule": "too_short", "reason": "2 turns < 4"}]


def test_it_answers_404_for_a_missing_dialogue(as_reviewer, db):
    assert as_reviewer.get("/api/dialogues/987654/").status_code == 404


def test_it_lists_dialogues_in_a_fixed_number_of_queries(as_reviewer, corpus, django_assert_max_num_queries):
    for i in range(30):
        d = make_dialogue(corpus["garden"], topic=f"topic {i}", is_flagged=True)
        DialogueFlag.objects.create(dialogue=d, rule="refusal", reason="As an AI")
    with django_assert_max_num_queries(6):
        assert len(ids(as_reviewer.get("/api/dialogues/?limit=100"))) == 33


def test_it_escapes_dialogue_text_in_the_browsable_api(as_reviewer, corpus):
    hostile = [{"role": "human", "text": '<img src=x onerror="window.__xss=1">'},
               {"role": "ai", "text": "<script>window.__xss=2</script>"}]
    dialogue = make_dialogue(corpus["garden"], turns=hostile, topic="<script>alert(1)</script>")
    page = as_reviewer.get(f"/api/dialogues/{dialogue.pk}/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    assert "<script>window.__xss" not in html and "<img src=x" not in html and "<script>alert" not in html
    assert "&lt;script&gt;window.__xss=2&lt;/script&gt;" in html
