"""Review services: events, derived state, version checks, undo, double review, leases, bulk decisions."""
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from collection.models import Dialogue, RejectReason, ReviewEvent
from collection.review import (
    ReviewConflict,
    ReviewError,
    dialogue_replay,
    lease_acquire,
    lease_next,
    lease_release,
    lease_renew,
    review_approve,
    review_bulk,
    review_edit_turn,
    review_reject,
    review_truncate,
    review_undo,
)
from tests.factories import DEFAULT_TURNS, make_dialogue, make_seed_set

pytestmark = pytest.mark.django_db


@pytest.fixture
def seed_set(db):
    return make_seed_set()


@pytest.fixture
def dialogue(seed_set):
    return make_dialogue(seed_set)


def stored(dialogue):
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    return fresh.status, fresh.turns


def test_it_approves_with_an_immutable_event_and_keeps_the_original(dialogue, reviewer):
    event = review_approve(dialogue=dialogue, actor=reviewer, expected_version=1, note="looks fine")
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    assert (fresh.status, fresh.version) == ("approved", 2)
    assert (event.action, event.actor, event.version, event.note) == ("approve", reviewer, 2, "looks fine")
    assert event.before == {"status": "undecided"} and event.after == {"status": "approved"}
    assert fresh.original_turns == DEFAULT_TURNS
    assert dialogue.version == 2 and dialogue.status == "approved"


def test_it_rejects_only_with_active_reason_codes(dialogue, reviewer):
    RejectReason.objects.filter(code="duplicate").update(active=False)
    with pytest.raises(ReviewError, match="reasons: pick at least one"):
        review_reject(dialogue=dialogue, actor=reviewer, expected_version=1, reasons=[])
    with pytest.raises(ReviewError, match="no-such-code"):
        review_reject(dialogue=dialogue, actor=reviewer, expected_version=1, reasons=["off-topic", "no-such-code"])
    with pytest.raises(ReviewError, match="duplicate"):
        review_reject(dialogue=dialogue, actor=reviewer, expected_version=1, reasons=["duplicate"])
    assert not ReviewEvent.objects.exists()
    event = review_reject(dialogue=dialogue, actor=reviewer, expected_version=1, reasons=["unsafe", "off-topic", "unsafe"])
    assert event.reasons == ["unsafe", "off-topic"]
    assert Dialogue.objects.get(pk=dialogue.pk).status == "rejected"


def test_it_ships_the_default_reject_reasons():
    assert set(RejectReason.objects.values_list("code", flat=True)) >= {
        "off-topic", "factual-error", "unsafe", "low-quality", "malformed", "duplicate", "other"}


def test_it_edits_a_turn_and_updates_the_derived_fields(dialogue, reviewer):
    event = review_edit_turn(dialogue=dialogue, actor=reviewer, expected_version=1, turn_index=1,
                             text="Put it in a bright window.\r\nWater sparingly.")
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    assert fresh.turns[1] == {"role": "ai", "text": "Put it in a bright window.\nWater sparingly."}
    assert fresh.turns[0] == DEFAULT_TURNS[0] and fresh.original_turns == DEFAULT_TURNS
    assert "bright window" in fresh.search_document and "sunny window" not in fresh.search_document
    assert fresh.length_chars == sum(len(t["text"]) for t in fresh.turns)
    assert event.before["turns"] == DEFAULT_TURNS and event.after["turn_index"] == 1
    assert fresh.status == "undecided" and fresh.version == 2


def test_it_refuses_bad_edits_naming_the_field(dialogue, reviewer):
    with pytest.raises(ReviewError, match="turn_index: 4 is out of range"):
        review_edit_turn(dialogue=dialogue, actor=reviewer, expected_version=1, turn_index=4, text="x")
    with pytest.raises(ReviewError, match="text: must not be empty"):
        review_edit_turn(dialogue=dialogue, actor=reviewer, expected_version=1, turn_index=0, text="  ")
    with pytest.raises(ReviewError, match="already has this text"):
        review_edit_turn(dialogue=dialogue, actor=reviewer, expected_version=1, turn_index=0,
                         text=DEFAULT_TURNS[0]["text"])
    with pytest.raises(ReviewError, match="expected_version"):
        review_edit_turn(dialogue=dialogue, actor=reviewer, expected_version="v1", turn_index=0, text="x")
    assert Dialogue.objects.get(pk=dialogue.pk).version == 1 and not ReviewEvent.objects.exists()


def test_it_truncates_at_a_turn(dialogue, reviewer):
    review_truncate(dialogue=dialogue, actor=reviewer, expected_version=1, turn_index=2)
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    assert fresh.turns == DEFAULT_TURNS[:2] and fresh.num_turns == 2
    assert "fertilize" not in fresh.search_document
    with pytest.raises(ReviewError, match="turn 0 would leave no turns"):
        review_truncate(dialogue=dialogue, actor=reviewer, expected_version=2, turn_index=0)


def test_it_refuses_a_stale_save_saying_who_changed_it_and_when(dialogue, reviewer, reviewer2):
    review_approve(dialogue=dialogue, actor=reviewer2, expected_version=1)
    stale = Dialogue.objects.get(pk=dialogue.pk)
    stale.version = 1
    with pytest.raises(ReviewConflict) as caught:
        review_edit_turn(dialogue=stale, actor=reviewer, expected_version=1, turn_index=1, text="Mine")
    message = str(caught.value)
    assert "changed by rob" in message and "version 1" in message and "current version is 2" in message
    assert caught.value.current_version == 2 and caught.value.changed_by == "rob"
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    assert fresh.turns == DEFAULT_TURNS and fresh.status == "approved"
    assert ReviewEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_lets_exactly_one_of_many_concurrent_saves_of_one_version_through(seed_set, reviewer):
    dialogue = make_dialogue(seed_set)
    barrier, outcomes = threading.Barrier(6), []

    def save(n):
        try:
            barrier.wait()
            review_edit_turn(dialogue=Dialogue.objects.get(pk=dialogue.pk), actor=reviewer, expected_version=1,
                             turn_index=1, text=f"answer {n}")
            outcomes.append("saved")
        except ReviewConflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [threading.Thread(target=save, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["saved"]
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    assert fresh.version == 2 and ReviewEvent.objects.filter(dialogue=fresh).count() == 1


def test_it_undoes_only_the_actors_own_latest_event(dialogue, reviewer, reviewer2):
    review_edit_turn(dialogue=dialogue, actor=reviewer, expected_version=1, turn_index=1, text="Rita's answer")
    review_reject(dialogue=dialogue, actor=reviewer2, expected_version=2, reasons=["off-topic"])
    undo = review_undo(dialogue=dialogue, actor=reviewer, expected_version=3)
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    assert fresh.turns == DEFAULT_TURNS and fresh.status == "rejected" and fresh.version == 4
    assert undo.undoes.action == "edit" and undo.before["turns"][1]["text"] == "Rita's answer"
    with pytest.raises(ReviewError, match="nothing here to undo"):
        review_undo(dialogue=dialogue, actor=reviewer, expected_version=4)
    review_undo(dialogue=dialogue, actor=reviewer2, expected_version=4)
    assert stored(dialogue) == ("undecided", DEFAULT_TURNS)


def test_it_keeps_a_later_edit_when_an_earlier_one_is_undone(dialogue, reviewer, reviewer2):
    review_edit_turn(dialogue=dialogue, actor=reviewer, expected_version=1, turn_index=0, text="Rita's question")
    review_edit_turn(dialogue=dialogue, actor=reviewer2, expected_version=2, turn_index=3, text="Rob's answer")
    review_undo(dialogue=dialogue, actor=reviewer, expected_version=3)
    status, turns = stored(dialogue)
    assert turns[0] == DEFAULT_TURNS[0] and turns[3]["text"] == "Rob's answer"


def test_it_replays_events_to_the_stored_state_after_a_sequence_with_undo(dialogue, reviewer, reviewer2):
    steps = [
        lambda v: review_edit_turn(dialogue=dialogue, actor=reviewer, expected_version=v, turn_index=1, text="A1"),
        lambda v: review_truncate(dialogue=dialogue, actor=reviewer2, expected_version=v, turn_index=2),
        lambda v: review_reject(dialogue=dialogue, actor=reviewer, expected_version=v, reasons=["malformed"]),
        lambda v: review_edit_turn(dialogue=dialogue, actor=reviewer2, expected_version=v, turn_index=0, text="Q0"),
        lambda v: review_undo(dialogue=dialogue, actor=reviewer2, expected_version=v),  # the Q0 edit
        lambda v: review_undo(dialogue=dialogue, actor=reviewer2, expected_version=v),  # the truncation
        lambda v: review_approve(dialogue=dialogue, actor=reviewer2, expected_version=v),
        lambda v: review_undo(dialogue=dialogue, actor=reviewer, expected_version=v),  # the reject
    ]
    for version, step in enumerate(steps, start=1):
        step(version)
        assert dialogue_replay(Dialogue.objects.get(pk=dialogue.pk)) == stored(dialogue)
    status, turns = stored(dialogue)
    assert status == "approved" and len(turns) == 4 and turns[1]["text"] == "A1" and turns[0] == DEFAULT_TURNS[0]
    assert Dialogue.objects.get(pk=dialogue.pk).original_turns == DEFAULT_TURNS


def test_it_needs_k_distinct_reviewers_and_marks_disagreement_disputed(reviewer, reviewer2, admin_user):
    seed_set = make_seed_set("double", reviews_required=2)
    agreed, split = make_dialogue(seed_set), make_dialogue(seed_set)
    review_approve(dialogue=agreed, actor=reviewer, expected_version=1)
    assert stored(agreed)[0] == "undecided"
    review_approve(dialogue=agreed, actor=reviewer, expected_version=2)  # the same reviewer twice is one decision
    assert stored(agreed)[0] == "undecided"
    review_approve(dialogue=agreed, actor=reviewer2, expected_version=3)
    assert stored(agreed)[0] == "approved"

    review_approve(dialogue=split, actor=reviewer, expected_version=1)
    review_reject(dialogue=split, actor=reviewer2, expected_version=2, reasons=["unsafe"])
    assert stored(split)[0] == "disputed"
    assert dialogue_replay(Dialogue.objects.get(pk=split.pk)) == stored(split)
    review_reject(dialogue=split, actor=reviewer, expected_version=3, reasons=["unsafe"])  # changes their mind
    assert stored(split)[0] == "rejected"


def test_it_does_not_hand_a_dialogue_again_to_a_reviewer_who_decided_it(reviewer, reviewer2):
    seed_set = make_seed_set("double", reviews_required=2)
    dialogue = make_dialogue(seed_set)
    assert lease_next(actor=reviewer, spec={}).pk == dialogue.pk
    review_approve(dialogue=dialogue, actor=reviewer, expected_version=1)
    assert Dialogue.objects.get(pk=dialogue.pk).lease_holder is None  # decided: the lease goes back
    assert lease_next(actor=reviewer, spec={}) is None
    assert lease_next(actor=reviewer2, spec={}).pk == dialogue.pk


def test_it_hands_out_the_next_undecided_dialogue_of_the_filter_skipping_other_leases(seed_set, reviewer, reviewer2):
    other = make_seed_set("other")
    first, second, third = (make_dialogue(seed_set) for _ in range(3))
    make_dialogue(other)
    review_approve(dialogue=first, actor=reviewer2, expected_version=1)
    spec = {"seed_set": seed_set.pk, "status": "approved"}  # the queue hands out undecided ones whatever the status
    got = lease_next(actor=reviewer, spec=spec)
    assert got.pk == second.pk and got.lease_holder == reviewer
    assert got.lease_expires_at > timezone.now() + timedelta(minutes=9)
    assert lease_next(actor=reviewer2, spec=spec).pk == third.pk
    assert lease_next(actor=reviewer, spec=spec, after_id=second.pk).pk == second.pk  # wraps; third is rob's
    # Moving on releases the lease you held: one lease per reviewer.
    Dialogue.objects.filter(pk=third.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert lease_next(actor=reviewer, spec=spec, after_id=second.pk).pk == third.pk
    assert Dialogue.objects.get(pk=second.pk).lease_holder is None


def test_it_acquires_renews_and_releases_leases(dialogue, reviewer, reviewer2):
    assert lease_acquire(dialogue=dialogue, actor=reviewer)
    assert not lease_acquire(dialogue=dialogue, actor=reviewer2)
    assert dialogue.lease_holder == reviewer
    assert not lease_renew(dialogue=dialogue, actor=reviewer2)
    Dialogue.objects.filter(pk=dialogue.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=5))
    assert lease_renew(dialogue=dialogue, actor=reviewer)
    assert Dialogue.objects.get(pk=dialogue.pk).lease_expires_at > timezone.now() + timedelta(minutes=9)
    assert not lease_release(dialogue=dialogue, actor=reviewer2)
    assert lease_release(dialogue=dialogue, actor=reviewer)
    assert lease_acquire(dialogue=dialogue, actor=reviewer2)


@pytest.mark.django_db(transaction=True)
def test_it_hands_concurrent_reviewers_different_dialogues(seed_set):
    from tests.conftest import make_user

    people = [make_user(f"rev{n}", "reviewer") for n in range(4)]
    dialogues = [make_dialogue(seed_set) for _ in range(6)]
    barrier, handed = threading.Barrier(len(people)), {}

    def take(user):
        try:
            barrier.wait()
            got = lease_next(actor=user, spec={"seed_set": seed_set.pk})
            handed[user.username] = got.pk if got else None
        finally:
            connection.close()

    threads = [threading.Thread(target=take, args=(u,)) for u in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(handed.values())) == len(people) and None not in handed.values()
    assert set(handed.values()) <= {d.pk for d in dialogues}


def test_it_bulk_approves_a_filtered_selection_one_event_each(seed_set, reviewer, reviewer2):
    picked = [make_dialogue(seed_set, topic=f"basil {n}") for n in range(5)]
    already = make_dialogue(seed_set)
    review_approve(dialogue=already, actor=reviewer2, expected_version=1)
    leased = make_dialogue(seed_set)
    lease_acquire(dialogue=leased, actor=reviewer2)
    untouched = make_dialogue(make_seed_set("other"))
    written = review_bulk(spec={"seed_set": seed_set.pk}, actor=reviewer, action="approve", chunk_size=2)
    assert written == 5
    assert all(stored(d)[0] == "approved" for d in picked)
    assert Dialogue.objects.get(pk=leased.pk).status == "undecided"
    assert Dialogue.objects.get(pk=untouched.pk).status == "undecided"
    assert ReviewEvent.objects.filter(actor=reviewer, action="approve").count() == 5
    assert all(Dialogue.objects.get(pk=d.pk).version == 2 for d in picked)
    assert all(dialogue_replay(Dialogue.objects.get(pk=d.pk)) == stored(d) for d in picked)


def test_it_bulk_rejects_with_reasons_and_refuses_a_bad_action(seed_set, reviewer):
    dialogues = [make_dialogue(seed_set, topic="refusal") for _ in range(3)]
    with pytest.raises(ReviewError, match="reasons"):
        review_bulk(spec={}, actor=reviewer, action="reject", reasons=[])
    with pytest.raises(ReviewError, match="action"):
        review_bulk(spec={}, actor=reviewer, action="edit")
    assert review_bulk(spec={"status": "undecided"}, actor=reviewer, action="reject", reasons=["low-quality"]) == 3
    assert {e.reasons[0] for e in ReviewEvent.objects.all()} == {"low-quality"}
    assert review_bulk(spec={}, actor=reviewer, action="reject", reasons=["low-quality"]) == 0  # nothing changes
    assert all(stored(d)[0] == "rejected" for d in dialogues)


def test_it_bulk_decides_double_review_per_reviewer(reviewer, reviewer2):
    seed_set = make_seed_set("double", reviews_required=2)
    dialogues = [make_dialogue(seed_set) for _ in range(3)]
    review_bulk(spec={}, actor=reviewer, action="approve")
    assert {stored(d)[0] for d in dialogues} == {"undecided"}
    review_bulk(spec={}, actor=reviewer2, action="reject", reasons=["other"])
    assert {stored(d)[0] for d in dialogues} == {"disputed"}
    assert all(dialogue_replay(Dialogue.objects.get(pk=d.pk)) == stored(d) for d in dialogues)
