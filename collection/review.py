"""Reviewing dialogues: approve, reject with reasons, edit or truncate turns, undo, bulk decisions, double review,
and leases so two reviewers are not handed the same dialogue.

What a user gets:
- Every decision and edit is an immutable ReviewEvent (who, when, before, after, reasons, note). The generated
  original (Dialogue.original_turns, raw_output) is never touched; Dialogue.turns/status/version are the current
  state, written in the same transaction as the event and always equal to `dialogue_replay(dialogue)`.
- A write names the version the reviewer saw. It is applied with `UPDATE … WHERE id = … AND version = expected`,
  so a stale save is refused with ReviewConflict (saying who changed the dialogue and when), never overwriting.
- Undo removes one of your own events from the effective history; the state is recomputed from what is left, so
  undoing an early edit never clobbers a later one.
- Double review: a seed set asks for k distinct reviewers. Until k have decided the dialogue stays undecided; then
  it is approved or rejected when they agree and "disputed" when they do not. A reviewer changes their own
  decision by deciding again (their latest decision counts) or by undoing it.
- Leases: opening a dialogue, or being handed it by `lease_next`, leases it to you for LEASE_SECONDS; the queue
  and bulk actions leave dialogues leased by someone else alone.

Event payloads (`before`/`after`): always {"status"}; plus {"turns"} when the event changed the turns, plus
{"turn_index"} in `after` for edits and truncations.
"""
import copy
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from collection.models import Dialogue, RejectReason, ReviewEvent, SeedSet
from collection.selection import select_dialogues

LEASE_SECONDS = 10 * 60
BULK_CHUNK = 1000
MAX_TURN_CHARS = 100_000

Action = ReviewEvent.Action
Status = Dialogue.Status
DECISIONS = {Action.APPROVE: Status.APPROVED, Action.REJECT: Status.REJECTED}
TURN_ACTIONS = (Action.EDIT, Action.TRUNCATE)


class ReviewError(ValueError):
    """The request itself is wrong (unknown reason code, turn out of range, nothing to undo); names the field."""


class ReviewConflict(Exception):
    """The dialogue changed since the reviewer loaded it; the message says who changed it, when, and to which version."""

    def __init__(self, message, *, dialogue_id, expected_version, current_version, changed_by=None, changed_at=None):
        super().__init__(message)
        self.dialogue_id = dialogue_id
        self.expected_version = expected_version
        self.current_version = current_version
        self.changed_by = changed_by
        self.changed_at = changed_at


# --- Deriving the state from events --------------------------------------------------------------------------

def decision_status(decisions, reviews_required=1):
    """Status from the effective decisions, a list of (actor_id, status) in the order they were made.

    Single review: the latest decision counts (a reviewer may correct another). Double review (k >= 2): each
    reviewer's latest decision counts; fewer than k reviewers -> undecided; all agree -> that; else disputed.
    """
    if not decisions:
        return Status.UNDECIDED
    if reviews_required <= 1:
        return decisions[-1][1]
    latest = {}
    for actor_id, status in decisions:
        latest[actor_id] = status
    if len(latest) < reviews_required:
        return Status.UNDECIDED
    values = set(latest.values())
    return values.pop() if len(values) == 1 else Status.DISPUTED


def fold_events(*, original_turns, events, reviews_required=1):
    """(status, turns) after applying the effective events, oldest first, to the generated original."""
    turns = copy.deepcopy(list(original_turns))
    decisions = []
    for event in events:
        if event.action in DECISIONS:
            decisions.append((event.actor_id, DECISIONS[event.action]))
        elif event.action == Action.EDIT:
            index = event.after["turn_index"]
            # Removing events only ever lengthens the turns (truncations undone), so the index still exists.
            turns[index] = {**turns[index], "text": event.after["turns"][index]["text"]}
        elif event.action == Action.TRUNCATE:
            turns = turns[: event.after["turn_index"]]
    return decision_status(decisions, reviews_required), turns


def effective_events(dialogue_id):
    """The events that make up the current state: not undo events, and not undone."""
    return (
        ReviewEvent.objects.filter(dialogue_id=dialogue_id)
        .exclude(action=Action.UNDO)
        .filter(undone_by__isnull=True)
        .order_by("id")
    )


def dialogue_replay(dialogue):
    """Recompute (status, turns) from the original and the event log; equals the stored state."""
    reviews_required = SeedSet.objects.values_list("reviews_required", flat=True).get(pk=dialogue.seed_set_id)
    return fold_events(
        original_turns=dialogue.original_turns,
        events=list(effective_events(dialogue.pk)),
        reviews_required=reviews_required,
    )


# --- Writes --------------------------------------------------------------------------------------------------

def _conflict(dialogue_id, expected_version):
    current = Dialogue.objects.filter(pk=dialogue_id).values_list("version", flat=True).first()
    if current is None:
        return ReviewConflict(f"Dialogue {dialogue_id} no longer exists.", dialogue_id=dialogue_id,
                              expected_version=expected_version, current_version=None)
    last = (
        ReviewEvent.objects.filter(dialogue_id=dialogue_id, version__gt=expected_version)
        .select_related("actor").order_by("-version").first()
    )
    if last is None:
        message = (f"Dialogue {dialogue_id} is at version {current}, not version {expected_version}; "
                   "reload it to see the current state.")
        return ReviewConflict(message, dialogue_id=dialogue_id, expected_version=expected_version,
                              current_version=current)
    when = timezone.localtime(last.created_at).strftime("%Y-%m-%d %H:%M:%S %Z")
    message = (
        f"Dialogue {dialogue_id} was changed by {last.actor.get_username()} at {when} ({last.action}) after you "
        f"loaded it: you had version {expected_version}, the current version is {current}. Nothing of yours was "
        "saved; look at the current version and redo your change if it still applies."
    )
    return ReviewConflict(message, dialogue_id=dialogue_id, expected_version=expected_version,
                          current_version=current, changed_by=last.actor.get_username(), changed_at=last.created_at)


def _check_version(expected_version):
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        try:
            expected_version = int(expected_version)
        except (TypeError, ValueError):
            raise ReviewError(f"expected_version: {expected_version!r} is not a whole number") from None
    if expected_version < 1:
        raise ReviewError("expected_version: must be 1 or more")
    return expected_version


def _write(*, dialogue, actor, expected_version, action, change, reasons=(), note=""):
    """Apply one event: `change(current, effective)` returns (status, turns, before, after, undoes) for the
    freshly read dialogue; the dialogue row is updated only if it is still at expected_version."""
    expected_version = _check_version(expected_version)
    now = timezone.now()
    with transaction.atomic():
        current = Dialogue.objects.select_related("seed_set").get(pk=dialogue.pk)
        if current.version != expected_version:
            raise _conflict(dialogue.pk, expected_version)
        effective = list(effective_events(current.pk))
        status, turns, before, after, undoes = change(current, effective)
        fields = {"status": status, "version": expected_version + 1, "updated_at": now}
        if turns is not None:
            current.set_turns(turns)
            fields.update(turns=current.turns, num_turns=current.num_turns, length_chars=current.length_chars,
                          search_document=current.search_document, minhash=current.minhash)
        if action in DECISIONS and current.lease_holder_id == actor.pk:
            # Decided: let the queue hand it on (double review) instead of holding it until the lease expires.
            fields.update(lease_holder=None, lease_expires_at=None)
        updated = Dialogue.objects.filter(pk=current.pk, version=expected_version).update(**fields)
        if not updated:
            raise _conflict(dialogue.pk, expected_version)
        event = ReviewEvent.objects.create(
            dialogue_id=current.pk, actor=actor, action=action, created_at=now, before=before, after=after,
            reasons=list(reasons), note=note, undoes=undoes, version=expected_version + 1,
        )
    # The caller's instance shows the new state, as if it had been reloaded.
    for name, value in fields.items():
        setattr(dialogue, name, value)
    return event


def _decide(*, dialogue, actor, expected_version, action, reasons=(), note=""):
    def change(current, effective):
        decisions = [(e.actor_id, DECISIONS[e.action]) for e in effective if e.action in DECISIONS]
        decisions.append((actor.pk, DECISIONS[action]))
        status = decision_status(decisions, current.seed_set.reviews_required)
        return status, None, {"status": current.status}, {"status": status}, None

    return _write(dialogue=dialogue, actor=actor, expected_version=expected_version, action=action, change=change,
                  reasons=reasons, note=note)


def clean_reasons(reasons):
    """Active RejectReason codes, de-duplicated in the order given; at least one."""
    if isinstance(reasons, str):
        reasons = [reasons]
    try:
        codes = list(dict.fromkeys(str(code).strip() for code in reasons if str(code).strip()))
    except TypeError:
        raise ReviewError("reasons: must be a list of reason codes") from None
    if not codes:
        raise ReviewError("reasons: pick at least one reason code")
    known = set(RejectReason.objects.filter(active=True, code__in=codes).values_list("code", flat=True))
    unknown = [code for code in codes if code not in known]
    if unknown:
        active = ", ".join(RejectReason.objects.filter(active=True).values_list("code", flat=True)) or "none"
        raise ReviewError(f"reasons: unknown or inactive code(s) {', '.join(unknown)} (active: {active})")
    return codes


def review_approve(*, dialogue, actor, expected_version, note=""):
    """Approve the dialogue as the actor (with double review, one of the k decisions it needs)."""
    return _decide(dialogue=dialogue, actor=actor, expected_version=expected_version, action=Action.APPROVE,
                   note=note)


def review_reject(*, dialogue, actor, expected_version, reasons, note=""):
    """Reject the dialogue with one or more active reason codes (see RejectReason)."""
    codes = clean_reasons(reasons)
    return _decide(dialogue=dialogue, actor=actor, expected_version=expected_version, action=Action.REJECT,
                   reasons=codes, note=note)


def _turn_index(turn_index, turns, *, allow_zero=True):
    if isinstance(turn_index, bool):
        raise ReviewError("turn_index: must be a whole number")
    try:
        index = int(turn_index)
    except (TypeError, ValueError):
        raise ReviewError(f"turn_index: {turn_index!r} is not a whole number") from None
    if not 0 <= index < len(turns):
        raise ReviewError(f"turn_index: {index} is out of range (the dialogue has {len(turns)} turns, 0-based)")
    if index == 0 and not allow_zero:
        raise ReviewError("turn_index: truncating at turn 0 would leave no turns; reject the dialogue instead")
    return index


def review_edit_turn(*, dialogue, actor, expected_version, turn_index, text):
    """Replace one turn's text (the role stays); the original stays in Dialogue.original_turns."""
    if not isinstance(text, str):
        raise ReviewError("text: must be a string")
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise ReviewError("text: must not be empty (truncate at this turn to drop it)")
    if len(text) > MAX_TURN_CHARS:
        raise ReviewError(f"text: longer than {MAX_TURN_CHARS} characters")

    def change(current, effective):
        index = _turn_index(turn_index, current.turns)
        if current.turns[index]["text"] == text:
            raise ReviewError(f"text: turn {index} already has this text")
        turns = copy.deepcopy(current.turns)
        turns[index] = {**turns[index], "text": text}
        before = {"status": current.status, "turns": current.turns}
        after = {"status": current.status, "turns": turns, "turn_index": index}
        return current.status, turns, before, after, None

    return _write(dialogue=dialogue, actor=actor, expected_version=expected_version, action=Action.EDIT,
                  change=change)


def review_truncate(*, dialogue, actor, expected_version, turn_index):
    """Drop the turn at turn_index and every turn after it."""

    def change(current, effective):
        index = _turn_index(turn_index, current.turns, allow_zero=False)
        turns = copy.deepcopy(current.turns[:index])
        before = {"status": current.status, "turns": current.turns}
        after = {"status": current.status, "turns": turns, "turn_index": index}
        return current.status, turns, before, after, None

    return _write(dialogue=dialogue, actor=actor, expected_version=expected_version, action=Action.TRUNCATE,
                  change=change)


def review_undo(*, dialogue, actor, expected_version):
    """Undo the actor's latest not-yet-undone event on this dialogue; the state is recomputed from the rest."""

    def change(current, effective):
        mine = [e for e in effective if e.actor_id == actor.pk]
        if not mine:
            raise ReviewError(f"dialogue {current.pk}: you have nothing here to undo")
        target = mine[-1]
        rest = [e for e in effective if e.pk != target.pk]
        status, turns = fold_events(original_turns=current.original_turns, events=rest,
                                    reviews_required=current.seed_set.reviews_required)
        changed_turns = turns != current.turns
        before, after = {"status": current.status}, {"status": status}
        if changed_turns:
            before["turns"], after["turns"] = current.turns, turns
        return status, (turns if changed_turns else None), before, after, target

    return _write(dialogue=dialogue, actor=actor, expected_version=expected_version, action=Action.UNDO,
                  change=change)


def review_last_undoable(*, actor):
    """The actor's latest event that can still be undone (any dialogue), or None: what "undo" on a page undoes."""
    mine = ReviewEvent.objects.filter(actor=actor).exclude(action=Action.UNDO).order_by("-id")
    # Look at the latest few first: a reviewer's history can be long, and the answer is almost always among them.
    recent = list(mine.values_list("id", flat=True)[:20])
    undone = set(ReviewEvent.objects.filter(undoes_id__in=recent).values_list("undoes_id", flat=True))
    latest = next((pk for pk in recent if pk not in undone), None)
    if latest is None and len(recent) == 20:
        latest = mine.filter(undone_by__isnull=True).values_list("id", flat=True).first()
    return ReviewEvent.objects.select_related("dialogue").get(pk=latest) if latest else None


# --- Leases --------------------------------------------------------------------------------------------------

def lease_free_for(actor, now):
    """Dialogues nobody else holds a live lease on."""
    return Q(lease_holder__isnull=True) | Q(lease_holder=actor) | Q(lease_expires_at__lte=now)


def _release_others(actor, keep_id):
    # One lease per reviewer: moving on frees the dialogue you were on for the rest of the team.
    Dialogue.objects.filter(lease_holder=actor).exclude(pk=keep_id).update(lease_holder=None, lease_expires_at=None)


def lease_acquire(*, dialogue, actor, seconds=LEASE_SECONDS):
    """Lease the dialogue to the actor unless someone else holds a live lease; True when the actor holds it now.

    The dialogue instance gets the current holder and expiry either way (pages show "open by … until …")."""
    now = timezone.now()
    with transaction.atomic():
        got = Dialogue.objects.filter(pk=dialogue.pk).filter(lease_free_for(actor, now)).update(
            lease_holder=actor, lease_expires_at=now + timedelta(seconds=seconds))
        if got:
            _release_others(actor, dialogue.pk)
    dialogue.lease_holder_id, dialogue.lease_expires_at = (
        Dialogue.objects.filter(pk=dialogue.pk).values_list("lease_holder_id", "lease_expires_at").get())
    return bool(got)


def lease_renew(*, dialogue, actor, seconds=LEASE_SECONDS):
    """Extend the actor's lease; False when the actor no longer holds it (expired and taken by someone else)."""
    now = timezone.now()
    until = now + timedelta(seconds=seconds)
    renewed = Dialogue.objects.filter(pk=dialogue.pk).filter(
        Q(lease_holder=actor) | Q(lease_holder__isnull=True) | Q(lease_expires_at__lte=now)
    ).update(lease_holder=actor, lease_expires_at=until)
    if renewed:
        dialogue.lease_holder_id, dialogue.lease_expires_at = actor.pk, until
    return bool(renewed)


def lease_release(*, dialogue, actor):
    """Give the actor's lease back; True when there was one."""
    released = Dialogue.objects.filter(pk=dialogue.pk, lease_holder=actor).update(lease_holder=None,
                                                                                  lease_expires_at=None)
    if released:
        dialogue.lease_holder_id, dialogue.lease_expires_at = None, None
    return bool(released)


def decided_by(actor):
    """Subquery: the actor has an effective decision on the outer dialogue."""
    return Exists(
        ReviewEvent.objects.filter(dialogue=OuterRef("pk"), actor=actor, action__in=list(DECISIONS))
        .filter(undone_by__isnull=True)
    )


def review_queue(*, actor, spec, now=None):
    """Undecided dialogues of the filter that the actor may be handed: not leased by someone else and, with
    double review, not already decided by the actor. Ordered by id."""
    now = now or timezone.now()
    qs = select_dialogues({**spec, "status": Status.UNDECIDED}).filter(lease_free_for(actor, now))
    if SeedSet.objects.filter(reviews_required__gt=1).exists():
        qs = qs.filter(~decided_by(actor))
    return qs.order_by("id")


def lease_next(*, actor, spec, after_id=None, seconds=LEASE_SECONDS):
    """Lease and return the next undecided dialogue of the filter after `after_id` (wrapping around), or None.

    On Postgres the candidate row is locked with FOR UPDATE SKIP LOCKED, so reviewers asking at the same moment
    get different dialogues without waiting on each other."""
    now = timezone.now()
    queue = review_queue(actor=actor, spec=spec, now=now)
    attempts = [queue.filter(id__gt=after_id), queue] if after_id else [queue]
    with transaction.atomic():
        for qs in attempts:
            if settings.IS_POSTGRES:
                qs = qs.select_for_update(skip_locked=True, of=("self",))
            picked = list(qs.values_list("id", flat=True)[:1])
            if not picked:
                continue
            got = Dialogue.objects.filter(pk=picked[0]).filter(lease_free_for(actor, now)).update(
                lease_holder=actor, lease_expires_at=now + timedelta(seconds=seconds))
            if got:
                _release_others(actor, picked[0])
                return Dialogue.objects.get(pk=picked[0])
    return None


# --- Bulk ----------------------------------------------------------------------------------------------------

def review_bulk(*, spec, actor, action, reasons=(), note="bulk", chunk_size=BULK_CHUNK):
    """Approve or reject every dialogue of a filter, one event each, committed chunk by chunk.

    Skips dialogues leased by someone else and ones where this decision would change nothing (already decided
    that way). Returns the number of events written."""
    if action not in DECISIONS:
        raise ReviewError(f"action: {action!r} is not one of approve, reject")
    codes = clean_reasons(reasons) if action == Action.REJECT else []
    now = timezone.now()
    candidates = select_dialogues(spec).filter(lease_free_for(actor, now))
    written, last_id = 0, 0
    while True:
        ids = list(candidates.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:chunk_size])
        if not ids:
            return written
        last_id = ids[-1]
        written += _bulk_chunk(ids, spec=spec, actor=actor, action=action, reasons=codes, note=note)


def _bulk_chunk(ids, *, spec, actor, action, reasons, note):
    decision = DECISIONS[action]
    now = timezone.now()
    with transaction.atomic():
        # Re-check the filter and the lease under the row lock: both may have changed since the ids were read.
        rows = select_dialogues(spec, Dialogue.objects.filter(id__in=ids)).filter(lease_free_for(actor, now))
        if settings.IS_POSTGRES:
            rows = rows.select_for_update(skip_locked=True, of=("self",))
        rows = list(rows.values_list("id", "seed_set_id", "status", "version").order_by("id"))
        if not rows:
            return 0
        required = dict(SeedSet.objects.filter(id__in={r[1] for r in rows}).values_list("id", "reviews_required"))
        decisions = {}
        for dialogue_id, actor_id, event_action in (
            ReviewEvent.objects.filter(dialogue_id__in=[r[0] for r in rows], action__in=list(DECISIONS))
            .filter(undone_by__isnull=True).order_by("id").values_list("dialogue_id", "actor_id", "action")
        ):
            decisions.setdefault(dialogue_id, []).append((actor_id, DECISIONS[event_action]))
        events, by_status = [], {}
        for dialogue_id, seed_set_id, status, version in rows:
            made = decisions.get(dialogue_id, [])
            k = required[seed_set_id]
            mine = [s for a, s in made if a == actor.pk]
            if (k <= 1 and status == decision) or (mine and mine[-1] == decision):
                continue
            new_status = decision_status(made + [(actor.pk, decision)], k)
            if not settings.IS_POSTGRES:
                # No row locks on SQLite: the version check is what keeps a concurrent write from being lost.
                if not Dialogue.objects.filter(pk=dialogue_id, version=version).update(
                        status=new_status, version=version + 1, updated_at=now):
                    continue
            else:
                by_status.setdefault(new_status, []).append(dialogue_id)
            events.append(ReviewEvent(
                dialogue_id=dialogue_id, actor=actor, action=action, created_at=now, before={"status": status},
                after={"status": new_status}, reasons=reasons, note=note, version=version + 1,
            ))
        # Rows are locked (FOR UPDATE), so each one is exactly at the version read above.
        for new_status, group in by_status.items():
            Dialogue.objects.filter(id__in=group).update(status=new_status, version=F("version") + 1, updated_at=now)
        ReviewEvent.objects.bulk_create(events)
        Dialogue.objects.filter(id__in=[e.dialogue_id for e in events], lease_holder=actor).update(
            lease_holder=None, lease_expires_at=None)
    return len(events)
