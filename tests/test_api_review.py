"""API: review actions on a dialogue (with version checks), bulk review, review events, and who may do them."""
import pytest

from collection.models import Dialogue, RejectReason, ReviewEvent
from collection.review import lease_acquire, review_approve
from tests.factories import make_dialogue, make_seed_set


@pytest.fixture
def dialogue(db):
    RejectReason.objects.get_or_create(code="off-topic", defaults={"label": "Off-topic"})
    return make_dialogue(make_seed_set("garden"))


def post(client, url, data):
    return client.post(url, data, content_type="application/json")


def review(client, dialogue, **data):
    return post(client, f"/api/dialogues/{dialogue.pk}/review/", data)


@pytest.mark.parametrize("method,url,data", [
    ("post", "/api/dialogues/{id}/review/", {"action": "approve", "expected_version": 1}),
    ("post", "/api/dialogues/bulk-review/", {"action": "approve", "filter": {}}),
    ("post", "/api/dialogues/next/", {}),
    ("get", "/api/dialogues/{id}/events/", None),
    ("get", "/api/review-events/", None),
    ("get", "/api/reject-reasons/", None),
])
def test_it_refuses_anonymous_raters_and_outsiders(client, as_rater, as_outsider, dialogue, method, url, data):
    url = url.format(id=dialogue.pk)
    expected = {client: 401, as_rater: 403, as_outsider: 403}
    for who, code in expected.items():
        response = getattr(who, method)(url, data or {}, content_type="application/json")
        assert response.status_code == code
    dialogue.refresh_from_db()
    assert (dialogue.status, dialogue.version, dialogue.lease_holder) == ("undecided", 1, None)
    assert not ReviewEvent.objects.exists()


def test_it_approves_a_dialogue(as_reviewer, reviewer, dialogue):
    response = review(as_reviewer, dialogue, action="approve", expected_version=1, note="fine")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["dialogue"]["status"], body["dialogue"]["version"]) == ("approved", 2)
    assert (body["event"]["action"], body["event"]["actor"], body["event"]["note"]) == ("approve", "rita", "fine")
    dialogue.refresh_from_db()
    assert (dialogue.status, dialogue.version) == ("approved", 2)
    assert ReviewEvent.objects.get().actor == reviewer


def test_it_refuses_a_stale_version_with_409_and_writes_nothing(as_reviewer, reviewer2, dialogue):
    review_approve(dialogue=dialogue, actor=reviewer2, expected_version=1)
    response = review(as_reviewer, dialogue, action="reject", expected_version=1, reasons=["off-topic"])
    assert response.status_code == 409
    body = response.json()
    assert "rob" in body["detail"] and body["current_version"] == 2
    dialogue.refresh_from_db()
    assert (dialogue.status, dialogue.version) == ("approved", 2)
    assert ReviewEvent.objects.count() == 1


def test_it_rejects_with_reason_codes(as_reviewer, dialogue):
    response = review(as_reviewer, dialogue, action="reject", expected_version=1, reasons=["off-topic"])
    assert response.status_code == 201
    assert response.json()["event"]["reasons"] == ["off-topic"]
    assert Dialogue.objects.get(pk=dialogue.pk).status == "rejected"


@pytest.mark.parametrize("data,field", [
    ({"action": "reject", "expected_version": 1}, "reasons"),
    ({"action": "reject", "expected_version": 1, "reasons": ["no-such-code"]}, "reasons"),
    ({"action": "edit", "expected_version": 1, "turn_index": 0}, "text"),
    ({"action": "edit", "expected_version": 1, "turn_index": 9, "text": "x"}, "turn_index"),
    ({"action": "truncate", "expected_version": 1}, "turn_index"),
    ({"action": "approve"}, "expected_version"),
    ({"action": "approve", "expected_version": "two"}, "expected_version"),
    ({"action": "publish", "expected_version": 1}, "action"),
])
def test_it_names_the_field_of_a_bad_review_request(as_reviewer, dialogue, data, field):
    response = review(as_reviewer, dialogue, **data)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not ReviewEvent.objects.exists()


def test_it_edits_a_turn_keeping_the_text_exactly_and_the_original(as_reviewer, dialogue):
    text = "  Water it when the top inch is dry.\n<script>x</script>  "
    response = review(as_reviewer, dialogue, action="edit", expected_version=1, turn_index=1, text=text)
    assert response.status_code == 201, response.json()
    dialogue.refresh_from_db()
    assert dialogue.turns[1]["text"] == text
    assert dialogue.original_turns[1]["text"].startswith("Give it a sunny window")
    assert response.json()["dialogue"]["original_turns"][1]["text"].startswith("Give it a sunny window")


def test_it_truncates_and_undoes(as_reviewer, dialogue):
    assert review(as_reviewer, dialogue, action="truncate", expected_version=1, turn_index=2).status_code == 201
    dialogue.refresh_from_db()
    assert dialogue.num_turns == 2
    response = review(as_reviewer, dialogue, action="undo", expected_version=2)
    assert response.status_code == 201
    dialogue.refresh_from_db()
    assert (dialogue.num_turns, dialogue.version) == (4, 3)


def test_it_does_not_let_a_reviewer_undo_someone_elses_event(as_reviewer, reviewer2, dialogue):
    review_approve(dialogue=dialogue, actor=reviewer2, expected_version=1)
    response = review(as_reviewer, dialogue, action="undo", expected_version=2)
    assert response.status_code == 400
    dialogue.refresh_from_db()
    assert (dialogue.status, dialogue.version) == ("approved", 2)


def test_it_answers_404_when_reviewing_a_missing_dialogue(as_reviewer, db):
    response = post(as_reviewer, "/api/dialogues/424242/review/", {"action": "approve", "expected_version": 1})
    assert response.status_code == 404


def test_it_bulk_approves_a_filtered_selection(as_reviewer, as_admin, reviewer2, dialogue):
    other_set = make_seed_set("kitchen")
    kitchen = [make_dialogue(other_set, topic=f"bread {i}") for i in range(3)]
    lease_acquire(dialogue=kitchen[0], actor=reviewer2)
    response = post(as_reviewer, "/api/dialogues/bulk-review/",
                    {"action": "approve", "filter": {"seed_set": str(other_set.pk), "status": "undecided"}})
    assert response.status_code == 200, response.json()
    assert response.json() == {"count": 2}
    statuses = dict(Dialogue.objects.values_list("id", "status"))
    assert [statuses[d.pk] for d in kitchen] == ["undecided", "approved", "approved"]
    assert statuses[dialogue.pk] == "undecided"
    response = post(as_admin, "/api/dialogues/bulk-review/", {"action": "reject", "reasons": ["off-topic"],
                                                              "filter": {"q": "bread"}})
    assert response.json() == {"count": 2}


@pytest.mark.parametrize("data,field", [
    ({"action": "reject", "filter": {}}, "reasons"),
    ({"action": "reject", "reasons": ["nope"], "filter": {}}, "reasons"),
    ({"action": "edit", "filter": {}}, "action"),
    ({"action": "approve"}, "filter"),
    ({"action": "approve", "filter": {"min_turns": "many"}}, "min_turns"),
])
def test_it_names_the_field_of_a_bad_bulk_request(as_reviewer, dialogue, data, field):
    response = post(as_reviewer, "/api/dialogues/bulk-review/", data)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert Dialogue.objects.get(pk=dialogue.pk).status == "undecided"


def test_it_lists_review_events_per_dialogue_with_filters(as_reviewer, reviewer, reviewer2, dialogue):
    other = make_dialogue(dialogue.seed_set, topic="other")
    review_approve(dialogue=dialogue, actor=reviewer, expected_version=1)
    review_approve(dialogue=other, actor=reviewer2, expected_version=1)
    assert review(as_reviewer, dialogue, action="undo", expected_version=2).status_code == 201
    nested = as_reviewer.get(f"/api/dialogues/{dialogue.pk}/events/").json()
    assert [e["action"] for e in nested["results"]] == ["approve", "undo"]
    flat = as_reviewer.get(f"/api/review-events/?dialogue={dialogue.pk}").json()
    assert flat["results"] == nested["results"]
    by_rob = as_reviewer.get("/api/review-events/?actor=rob").json()["results"]
    assert [(e["dialogue"], e["actor"]) for e in by_rob] == [(other.pk, "rob")]
    undos = as_reviewer.get(f"/api/dialogues/{dialogue.pk}/events/?action=undo").json()["results"]
    assert len(undos) == 1 and undos[0]["undoes"] == nested["results"][0]["id"]
    assert as_reviewer.get("/api/dialogues/424242/events/").status_code == 404
    assert as_reviewer.get("/api/review-events/?action=dance").status_code == 400


def test_it_leases_the_next_undecided_dialogue(as_reviewer, reviewer, reviewer2, dialogue):
    second = make_dialogue(dialogue.seed_set, topic="second")
    lease_acquire(dialogue=dialogue, actor=reviewer2)
    response = post(as_reviewer, "/api/dialogues/next/", {})
    assert response.status_code == 200
    assert response.json()["id"] == second.pk
    second.refresh_from_db()
    assert second.lease_holder == reviewer
    review_approve(dialogue=second, actor=reviewer, expected_version=1)
    assert post(as_reviewer, "/api/dialogues/next/", {}).status_code == 204


def test_it_lists_reject_reasons(as_reviewer, dialogue):
    codes = [r["code"] for r in as_reviewer.get("/api/reject-reasons/?active=true").json()["results"]]
    assert "off-topic" in codes
