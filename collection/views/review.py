"""Review pages: the queue with filters, counts and progress; one dialogue with its history and the review actions;
bulk decisions; the disagreements of double review.

The filter travels in the query string (collection.selection's keys plus sort and page), so every link and form
keeps it: "review next", the dialogue page's next/previous, the export link and the bulk actions all act on the
same selection. The writes go through collection.review, which checks versions and records events.
"""
import json
from datetime import datetime, time
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.models import Count, F, Lookup, Prefetch, Q
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from psycopg.errors import QueryCanceled

from baize_eval.roles import REVIEWER, role_required
from collection import review
from collection.filters import RULES
from collection.models import Dialogue, DialogueFlag, GenerationRun, RejectReason, ReviewEvent, SeedSet
from collection.selection import SPEC_KEYS, STATUSES, SelectionError, clean_spec, select_dialogues

PAGE_SIZE = 50
# Filters the covering indexes count exactly at any size; others are counted exactly up to COUNT_CAP dialogues.
EXACT_COUNT_KEYS = {"seed_set", "run"}
COUNT_CAP = 10_000
# Per count query; over it the queue shows the planner's estimates, labeled approximate.
COUNT_BUDGET_MS = 120
# Seed set / run selections the planner expects to hold more dialogues than this are estimated, not counted.
ESTIMATE_ABOVE = 250_000
REVIEWER_COUNTS_KEY = "review:reviewer-counts"
REVIEWER_COUNTS_SECONDS = 30
SORTS = {
    "id": ("id",), "-id": ("-id",),
    "turns": ("num_turns", "id"), "-turns": ("-num_turns", "-id"),
    "length": ("length_chars", "id"), "-length": ("-length_chars", "-id"),
}
SORT_LABELS = {"id": "oldest first", "-id": "newest first", "turns": "fewest turns", "-turns": "most turns",
               "length": "shortest", "-length": "longest"}
# Bulk decisions on more dialogues than this run as a Celery task instead of inside the request.
BULK_INLINE_LIMIT = 5000
BULK_COUNT_BUDGET_MS = 200

reviewer_required = role_required(REVIEWER)
User = get_user_model()


# --- The filter in the query string ----------------------------------------------------------------------------

def _filter_from(params):
    """(spec, sort, error) from a query string or form; a bad value gives an empty spec and the message."""
    try:
        spec = clean_spec(params)
    except SelectionError as error:
        return {}, "id", str(error)
    sort = params.get("sort") or "id"
    if sort not in SORTS:
        return spec, "id", f"sort: {sort!r} is not one of {', '.join(SORTS)}"
    return spec, sort, None


def _query(spec, sort="id", **extra):
    """The query string for a filter (what links and forms carry)."""
    items = [(key, spec[key]) for key in SPEC_KEYS if key in spec]
    if sort != "id":
        items.append(("sort", sort))
    items += [(key, value) for key, value in extra.items() if value not in (None, "")]
    return urlencode(items)


def _with_query(url, query):
    return f"{url}?{query}" if query else url


# --- Queue -----------------------------------------------------------------------------------------------------

def _estimate(spec):
    """The planner's row estimate for a filter (EXPLAIN, no rows read): shown only as "≈ n"."""
    try:
        plan = json.loads(select_dialogues(spec).order_by().values("pk").explain(format="json"))
        return int(plan[0]["Plan"]["Plan Rows"])
    except (ValueError, KeyError, IndexError, TypeError, DatabaseError):
        return 0


def _within_budget(count, budget_ms):
    """Run count() with each statement limited to budget_ms (Postgres); None when the database needs longer."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(budget_ms)}ms"])
            return count()
    except OperationalError as error:
        if isinstance(error.__cause__, QueryCanceled):
            return None
        raise


def _exact_counts(universe, status, flag, *, whole_table=False):
    """Exact counts over `universe` (the filter without its status and flag parts)."""
    # One pass over (status, is_flagged) answers both the status chips (under an any/none flag filter) and the
    # flagged/unflagged chips (under the status filter).
    grid = list(universe.order_by().values_list("status", "is_flagged").annotate(n=Count("*")))
    counts = {
        "flagged": sum(n for s, f, n in grid if f and status in ("all", s)),
        "unflagged": sum(n for s, f, n in grid if not f and status in ("all", s)),
        "status": dict.fromkeys(STATUSES, 0), "approximate": False,
    }
    if flag in (None, "any", "none"):
        for row_status, row_flagged, n in grid:
            if flag is None or row_flagged == (flag == "any"):
                counts["status"][row_status] += n
    else:
        counts["status"].update(dict(
            select_dialogues({"flag": flag}, universe).order_by().values_list("status").annotate(n=Count("*"))))
    if whole_table and status == "all":
        flags = DialogueFlag.objects.all()  # nothing to join: index-only on (rule, dialogue)
    else:
        flags = DialogueFlag.objects.filter(
            dialogue__in=select_dialogues({"status": status}, universe).order_by().values("pk"))
    counts["rules"] = {**dict.fromkeys(RULES, 0),
                       **dict(flags.order_by().values_list("rule").annotate(n=Count("*")))}
    counts["total"] = sum(counts["status"].values()) if status == "all" else counts["status"][status]
    return counts


def _estimated_counts(spec):
    """The same counts from the planner's statistics, for selections too big to count within the page budget."""
    without_status = {k: v for k, v in spec.items() if k != "status"}
    without_flag = {k: v for k, v in spec.items() if k != "flag"}
    return {
        "status": {s: _estimate({**without_status, "status": s}) for s in STATUSES},
        "flagged": _estimate({**without_flag, "flag": "any"}),
        "unflagged": _estimate({**without_flag, "flag": "none"}),
        "rules": {rule: _estimate({**without_flag, "flag": rule}) for rule in RULES},
        "total": _estimate(spec),
        "approximate": True,
    }


def queue_counts(spec, *, cap=None, budget_ms=None):
    """Counts for the queue's chips, progress bar and pager, plus the queryset its rows come from.

    Seed set, run, status and flag filters are counted exactly from covering indexes when the database answers
    within budget_ms per query (selections expected above ESTIMATE_ABOVE are estimated without trying). A text search or a turns/length filter is first resolved to at most cap + 1 ids
    (one index scan); up to the cap everything is counted exactly within those ids, and the page's rows come from
    them too (so a search the planner misjudges never walks the whole table). Bigger selections, or counts over
    budget, come from the planner's estimates and are labeled approximate ("≈").

    Returns {"status": {status: n} ignoring the status filter, "rules": {rule: n} ignoring the flag filter,
    "flagged", "unflagged" under the status filter, "total", "approximate", "rows": the filter's queryset}."""
    cap = COUNT_CAP if cap is None else cap
    budget_ms = COUNT_BUDGET_MS if budget_ms is None else budget_ms
    status, flag = spec.get("status", "all"), spec.get("flag")
    base = {k: v for k, v in spec.items() if k not in ("status", "flag")}
    if not settings.IS_POSTGRES:
        # The embedded SQLite demo is small: it always counts exactly.
        return {**_exact_counts(select_dialogues(base), status, flag), "rows": select_dialogues(spec)}
    # Planner statistics first (no rows read): a selection this big is estimated straight away instead of spending
    # the budget on a count that cannot finish in it.
    expected = _estimate(base)
    if set(base) <= EXACT_COUNT_KEYS:
        if expected > ESTIMATE_ABOVE:
            return {**_estimated_counts(spec), "rows": select_dialogues(spec)}
        counts = _within_budget(lambda: _exact_counts(select_dialogues(base), status, flag, whole_table=not base),
                                budget_ms)
        return {**(counts or _estimated_counts(spec)), "rows": select_dialogues(spec)}
    if expected > 5 * cap:
        return {**_estimated_counts(spec), "rows": select_dialogues(spec)}
    with transaction.atomic(), connection.cursor() as cursor:
        # Enough memory for an exact (not lossy) bitmap, so matches are not re-checked page by page.
        cursor.execute("SELECT set_config('work_mem', '64MB', true)")
        found = list(select_dialogues(base).order_by().values_list("id", "status", "is_flagged")[:cap + 1])
    if len(found) > cap:
        return {**_estimated_counts(spec), "rows": select_dialogues(spec)}
    return _counts_of_found(found, status, flag)


class _AnyOf(Lookup):
    """`column = ANY(%s)` with the ids as one array parameter: compiling thousands of IN placeholders costs more
    than the query itself (Postgres only, like the capped path that uses it)."""

    lookup_name = "any_of"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s)", [*lhs_params, list(self.rhs)]


def _counts_of_found(found, status, flag):
    """Exact counts, in Python, over the (id, status, is_flagged) rows of a capped filter, plus their flags."""
    rules_of = {}
    flags = DialogueFlag.objects.filter(_AnyOf(F("dialogue_id"), [row[0] for row in found]))
    for dialogue_id, rule in flags.values_list("dialogue_id", "rule"):
        rules_of.setdefault(dialogue_id, set()).add(rule)

    def flag_matches(dialogue_id, flagged):
        if flag is None:
            return True
        if flag in ("any", "none"):
            return flagged == (flag == "any")
        return flag in rules_of.get(dialogue_id, ())

    counts = {"status": dict.fromkeys(STATUSES, 0), "rules": dict.fromkeys(RULES, 0), "flagged": 0,
              "unflagged": 0, "approximate": False}
    matching = []
    for dialogue_id, row_status, flagged in found:
        in_status = status in ("all", row_status)
        if flag_matches(dialogue_id, flagged):
            counts["status"][row_status] += 1
            if in_status:
                matching.append(dialogue_id)
        if in_status:
            counts["flagged" if flagged else "unflagged"] += 1
            for rule in rules_of.get(dialogue_id, ()):
                counts["rules"][rule] = counts["rules"].get(rule, 0) + 1
    counts["total"] = len(matching)
    counts["rows"] = Dialogue.objects.filter(_AnyOf(F("id"), matching))
    return counts


def reviewer_counts():
    """[(username, decisions today, decisions all time)]: approvals and rejections that were not undone.

    Counted as all decisions minus the undone ones (few), so the big count is an index-only scan of the partial
    decisions index rather than an anti-join over every event. Cached for REVIEWER_COUNTS_SECONDS: every page
    load of every reviewer shows them, and counting hundreds of thousands of events each time is not worth it."""
    cached = cache.get(REVIEWER_COUNTS_KEY)
    if cached is not None:
        return cached
    start = timezone.make_aware(datetime.combine(timezone.localdate(), time.min))
    decisions = list(
        ReviewEvent.objects.filter(action__in=list(review.DECISIONS)).order_by().values_list("actor_id")
        .annotate(today=Count("created_at", filter=Q(created_at__gte=start)), total=Count("*"))
    )
    undone = {
        actor_id: (today, total) for actor_id, today, total in
        ReviewEvent.objects.filter(action=ReviewEvent.Action.UNDO, undoes__action__in=list(review.DECISIONS))
        .order_by().values_list("undoes__actor_id")
        .annotate(today=Count("id", filter=Q(undoes__created_at__gte=start)), total=Count("id"))
    }
    names = dict(User.objects.filter(pk__in=[row[0] for row in decisions]).values_list("pk", "username"))
    rows = []
    for actor_id, today, total in decisions:
        minus_today, minus_total = undone.get(actor_id, (0, 0))
        if total - minus_total:
            rows.append((names.get(actor_id, "?"), today - minus_today, total - minus_total))
    rows = {"rows": sorted(rows, key=lambda row: (-row[2], row[0])), "as_of": timezone.now()}
    cache.set(REVIEWER_COUNTS_KEY, rows, REVIEWER_COUNTS_SECONDS)
    return rows


@require_GET
@reviewer_required
def queue(request):
    spec, sort, error = _filter_from(request.GET)
    counts = queue_counts(spec)
    status_counts, rule_counts = counts["status"], counts["rules"]
    approximate = counts["approximate"]
    status = spec.get("status", "all")
    total = counts["total"]
    try:
        page = max(1, int(request.GET.get("page") or 1))
    except ValueError:
        page = 1
    pages = max(1, -(-total // PAGE_SIZE))
    if not approximate:
        page = min(page, pages)
    offset = (page - 1) * PAGE_SIZE
    rows = list(
        counts["rows"]
        .select_related("seed_set", "lease_holder")
        .only("id", "topic", "status", "num_turns", "length_chars", "is_flagged", "run_id", "version",
              "lease_holder__username", "lease_expires_at", "seed_set__name")
        .prefetch_related(Prefetch("flags", queryset=DialogueFlag.objects.only("dialogue_id", "rule", "reason")))
        .order_by(*SORTS[sort])[offset:offset + PAGE_SIZE + 1]
    )
    has_next = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    if approximate:  # the pager only knows whether there is a next page
        pages = None
    progress = None
    if status_counts:
        all_count = sum(status_counts.values())
        decided = status_counts["approved"] + status_counts["rejected"]
        progress = {
            "decided": decided, "total": all_count,
            "percent": round(100 * decided / all_count, 1) if all_count else 0,
            "segments": [(s, status_counts[s], 100 * status_counts[s] / all_count if all_count else 0)
                         for s in ("approved", "rejected", "disputed")],
        }
    query = _query(spec, sort)
    context = {
        "spec": spec, "sort": sort, "error": error, "rows": rows, "now": timezone.now(),
        "status_counts": status_counts, "total": total, "approximate": approximate, "count_cap": COUNT_CAP,
        "progress": progress,
        "page": page, "pages": pages, "offset": offset, "shown_to": offset + len(rows),
        "prev_page": _with_query("/review/", _query(spec, sort, page=page - 1)) if page > 1 else None,
        "next_page": _with_query("/review/", _query(spec, sort, page=page + 1)) if has_next else None,
        "query": query,
        "status_links": [(s, sum(status_counts.values()) if s == "all" else status_counts[s],
                          _with_query("/review/", _query({**spec, "status": s}, sort)), status == s)
                         for s in ["all"] + STATUSES],
        "flag_links": [(label, count, _with_query("/review/", _query({**spec, "flag": value}, sort)),
                        spec.get("flag") == value)
                       for label, value, count in
                       [("any flag", "any", counts["flagged"]), ("no flag", "none", counts["unflagged"])]
                       + [(rule, rule, rule_counts.get(rule, 0)) for rule in RULES]],
        "flag_clear": _with_query("/review/", _query({k: v for k, v in spec.items() if k != "flag"}, sort)),
        "seed_sets": SeedSet.objects.only("id", "name").order_by("name"),
        "runs": GenerationRun.objects.only("id", "name").order_by("-id")[:200],
        "rules": RULES, "sorts": SORT_LABELS, "statuses": STATUSES,
        "reviewers": reviewer_counts(),
        "reasons": RejectReason.objects.filter(active=True),
    }
    return render(request, "collection/review_queue.html", context, status=400 if error else 200)


@require_GET
@reviewer_required
def next_dialogue(request):
    """Lease the next undecided dialogue of the filter and open it; back to the queue when none is left."""
    spec, sort, error = _filter_from(request.GET)
    query = _query(spec, sort)
    if error:
        messages.error(request, error)
        return redirect(_with_query("/review/", query))
    try:
        after = int(request.GET.get("after") or 0) or None
    except ValueError:
        after = None
    dialogue = review.lease_next(actor=request.user, spec=spec, after_id=after)
    if dialogue is None:
        messages.success(request, "Nothing left to review in this filter: every dialogue is decided, decided by you, "
                                  "or open by another reviewer.")
        return redirect(_with_query("/review/", query))
    return redirect(_with_query(f"/review/{dialogue.pk}/", query))


# --- One dialogue --------------------------------------------------------------------------------------------

def _neighbour(spec, dialogue_id, direction):
    qs = select_dialogues(spec).order_by()
    if direction > 0:
        qs = qs.filter(id__gt=dialogue_id).order_by("id")
    else:
        qs = qs.filter(id__lt=dialogue_id).order_by("-id")
    return qs.values_list("id", flat=True).first()


def _generation_summary(generation):
    """The metadata worth a glance (model, parameters, template, per-call usage); the rest stays in JSON."""
    generation = generation if isinstance(generation, dict) else {}
    template = generation.get("template")
    if isinstance(template, dict):
        template = f"{template.get('name', '?')} v{template.get('version', '?')}"
    calls = []
    for call in generation.get("calls") or []:
        if not isinstance(call, dict):
            continue
        usage = call.get("usage") if isinstance(call.get("usage"), dict) else {}
        calls.append({
            "purpose": call.get("purpose", ""),
            "prompt_tokens": usage.get("prompt_tokens", call.get("prompt_tokens")),
            "completion_tokens": usage.get("completion_tokens", call.get("completion_tokens")),
            "latency_ms": call.get("latency_ms"),
            "finish_reason": call.get("finish_reason", ""),
            "model": call.get("model", ""),
        })
    params = generation.get("params") if isinstance(generation.get("params"), dict) else {}
    return {
        "model": generation.get("model", ""),
        "params": sorted(params.items()),
        "template": template or generation.get("template_version", ""),
        "mode": generation.get("mode", ""),
        "calls": calls,
        "latency_ms": sum(c["latency_ms"] for c in calls if isinstance(c["latency_ms"], (int, float))),
    }


def _event_rows(dialogue, reason_labels):
    rows = []
    for event in dialogue.events.select_related("actor", "undoes", "undone_by__actor").order_by("id"):
        before, after = event.before or {}, event.after or {}
        row = {"event": event, "reasons": [reason_labels.get(c, c) for c in event.reasons or []],
               "status_change": (before.get("status"), after.get("status")), "undone_by": None, "detail": []}
        try:
            row["undone_by"] = event.undone_by
        except ReviewEvent.DoesNotExist:
            pass
        index = after.get("turn_index")
        if event.action == ReviewEvent.Action.EDIT and index is not None:
            old, new = before.get("turns", []), after.get("turns", [])
            if index < len(old) and index < len(new):
                row["detail"] = [("turn", index), ("before", old[index]["text"]), ("after", new[index]["text"])]
        elif event.action == ReviewEvent.Action.TRUNCATE and index is not None:
            dropped = len(before.get("turns", [])) - index
            row["detail"] = [("turn", index), ("dropped", f"{dropped} turn{'s' if dropped != 1 else ''} from turn {index} on")]
        elif event.action == ReviewEvent.Action.UNDO and event.undoes_id:
            row["detail"] = [("undid", f"{event.undoes.action} (version {event.undoes.version})")]
            if "turns" in after:
                row["detail"].append(("turns", f"{len(before.get('turns', []))} → {len(after['turns'])}"))
        rows.append(row)
    return rows


def _dialogue_page(request, dialogue_id, *, status=200, problem=None, conflict=None, draft=None):
    dialogue = get_object_or_404(
        Dialogue.objects.select_related("seed_set", "seed", "run", "lease_holder"), pk=dialogue_id)
    spec, sort, error = _filter_from(request.GET if request.method == "GET" else request.POST)
    if status == 200:
        review.lease_acquire(dialogue=dialogue, actor=request.user)
    query = _query(spec, sort)
    reasons = list(RejectReason.objects.all())
    reason_labels = {r.code: r.label for r in reasons}
    last = review.review_last_undoable(actor=request.user)
    prev_id, next_id = _neighbour(spec, dialogue.pk, -1), _neighbour(spec, dialogue.pk, +1)
    held_by_other = (dialogue.lease_holder_id and dialogue.lease_holder_id != request.user.pk
                     and dialogue.lease_expires_at and dialogue.lease_expires_at > timezone.now())
    turns, original = dialogue.turns, dialogue.original_turns
    context = {
        "dialogue": dialogue,
        "turns": [(i, turn, i >= len(original) or original[i]["text"] != turn["text"]) for i, turn in enumerate(turns)],
        "original_changed": original != turns,
        "original_turns": list(enumerate(dialogue.original_turns)),
        "flags": list(dialogue.flags.order_by("rule")), "rules": RULES,
        "generation": _generation_summary(dialogue.generation),
        "generation_json": json.dumps(dialogue.generation, indent=2, ensure_ascii=False, sort_keys=True)
        if dialogue.generation else "",
        "events": _event_rows(dialogue, reason_labels),
        "active_reasons": [r for r in reasons if r.active],
        "held_by_other": held_by_other, "lease_holder": dialogue.lease_holder,
        "last_undoable": last, "query": query, "spec": spec, "sort": sort, "error": error,
        "prev_url": _with_query(f"/review/{prev_id}/", query) if prev_id else None,
        "next_url": _with_query(f"/review/{next_id}/", query) if next_id else None,
        "queue_url": _with_query("/review/", query),
        "next_undecided_url": _with_query("/review/next/", _query(spec, sort, after=dialogue.pk)),
        "problem": problem, "conflict": conflict, "draft": draft,
        "decisions": _decisions_of(dialogue, reason_labels) if dialogue.seed_set.reviews_required > 1 else None,
        "lease_seconds": review.LEASE_SECONDS,
    }
    return render(request, "collection/dialogue.html", context, status=status)


def _decisions_of(dialogue, reason_labels):
    return [(user, status, [reason_labels.get(c, c) for c in reasons or []], when)
            for user, status, reasons, when in review_decisions([dialogue.pk]).get(dialogue.pk, [])]


def review_decisions(dialogue_ids):
    """{dialogue_id: [(username, status, reasons, when)]}: each reviewer's latest effective decision."""
    latest = {}
    events = (
        ReviewEvent.objects.filter(dialogue_id__in=dialogue_ids, action__in=list(review.DECISIONS),
                                   undone_by__isnull=True)
        .select_related("actor").order_by("id")
    )
    for event in events:
        latest.setdefault(event.dialogue_id, {})[event.actor.get_username()] = (
            review.DECISIONS[event.action], event.reasons, event.created_at)
    return {d: [(user, *decision) for user, decision in sorted(people.items())] for d, people in latest.items()}


@require_GET
@reviewer_required
def dialogue_page(request, dialogue_id):
    return _dialogue_page(request, dialogue_id)


def _act(request, dialogue_id, action, *, next_on_success):
    """Run one review service from a form post; conflicts and bad input re-render the page with the message."""
    dialogue = get_object_or_404(Dialogue.objects.only("id"), pk=dialogue_id)
    spec, sort, _ = _filter_from(request.POST)
    query = _query(spec, sort)
    draft = None
    try:
        action(dialogue, request.POST.get("version"))
    except review.ReviewConflict as conflict:
        draft = request.POST.get("text")
        return _dialogue_page(request, dialogue_id, status=409, conflict=str(conflict), draft=draft)
    except review.ReviewError as problem:
        return _dialogue_page(request, dialogue_id, status=400, problem=str(problem))
    if next_on_success:
        return redirect(_with_query("/review/next/", _query(spec, sort, after=dialogue_id)))
    return redirect(_with_query(f"/review/{dialogue_id}/", query))


@require_POST
@reviewer_required
def approve(request, dialogue_id):
    def run(dialogue, version):
        review.review_approve(dialogue=dialogue, actor=request.user, expected_version=version,
                              note=request.POST.get("note", "").strip())
        messages.success(request, f"Approved dialogue {dialogue.pk}.")
    return _act(request, dialogue_id, run, next_on_success=True)


@require_POST
@reviewer_required
def reject(request, dialogue_id):
    def run(dialogue, version):
        review.review_reject(dialogue=dialogue, actor=request.user, expected_version=version,
                             reasons=request.POST.getlist("reasons"), note=request.POST.get("note", "").strip())
        messages.success(request, f"Rejected dialogue {dialogue.pk}.")
    return _act(request, dialogue_id, run, next_on_success=True)


@require_POST
@reviewer_required
def edit_turn(request, dialogue_id):
    def run(dialogue, version):
        review.review_edit_turn(dialogue=dialogue, actor=request.user, expected_version=version,
                                turn_index=request.POST.get("turn_index"), text=request.POST.get("text", ""))
        messages.success(request, f"Saved turn {request.POST.get('turn_index')}.")
    return _act(request, dialogue_id, run, next_on_success=False)


@require_POST
@reviewer_required
def truncate(request, dialogue_id):
    def run(dialogue, version):
        review.review_truncate(dialogue=dialogue, actor=request.user, expected_version=version,
                               turn_index=request.POST.get("turn_index"))
        messages.success(request, f"Dropped turn {request.POST.get('turn_index')} and every turn after it.")
    return _act(request, dialogue_id, run, next_on_success=False)


@require_POST
@reviewer_required
def undo(request):
    """Undo your latest action (on whichever dialogue it was) and open that dialogue."""
    try:
        dialogue_id = int(request.POST.get("dialogue", ""))
    except ValueError:
        return HttpResponseBadRequest("dialogue: not a dialogue id")

    def run(dialogue, version):
        event = review.review_undo(dialogue=dialogue, actor=request.user, expected_version=version)
        messages.success(request, f"Undid your {event.undoes.action} on dialogue {dialogue.pk}.")
    return _act(request, dialogue_id, run, next_on_success=False)


@require_POST
@reviewer_required
def lease(request, dialogue_id):
    """Renew (the page pings while open) or release the lease: JSON with who holds it until when."""
    dialogue = get_object_or_404(Dialogue.objects.only("id", "lease_holder", "lease_expires_at"), pk=dialogue_id)
    if request.POST.get("release"):
        review.lease_release(dialogue=dialogue, actor=request.user)
        return JsonResponse({"held": False})
    held = review.lease_renew(dialogue=dialogue, actor=request.user)
    dialogue.refresh_from_db(fields=["lease_holder", "lease_expires_at"])
    return JsonResponse({
        "held": held,
        "holder": dialogue.lease_holder.get_username() if dialogue.lease_holder else None,
        "expires_at": dialogue.lease_expires_at.isoformat() if dialogue.lease_expires_at else None,
    })


# --- Bulk and disagreements ----------------------------------------------------------------------------------

@reviewer_required
def bulk(request):
    """GET: confirm how many dialogues a bulk decision would touch. POST: do it (inline, or as a task when big)."""
    params = request.POST if request.method == "POST" else request.GET
    spec, sort, error = _filter_from(params)
    query = _query(spec, sort)
    action = params.get("action")
    if error or action not in review.DECISIONS:
        messages.error(request, error or "Pick approve or reject for a bulk decision.")
        return redirect(_with_query("/review/", query))
    now = timezone.now()
    selected = select_dialogues(spec)
    # Exact when the database counts it within the budget; a huge selection shows the planner's estimate, labeled.
    count = _within_budget(selected.count, BULK_COUNT_BUDGET_MS) if settings.IS_POSTGRES else selected.count()
    approximate = count is None
    if approximate:
        count = _estimate(spec)
    # Live leases are few: start from them rather than from the selection.
    leased = select_dialogues(spec, Dialogue.objects.filter(lease_holder__isnull=False, lease_expires_at__gt=now)
                              .exclude(lease_holder=request.user)).count()
    context = {"spec": spec, "sort": sort, "query": query, "action": action, "count": count, "leased": leased,
               "approximate": approximate,
               "reasons": RejectReason.objects.filter(active=True), "chosen": params.getlist("reasons"),
               "queue_url": _with_query("/review/", query), "problem": None}
    if request.method != "POST":
        return render(request, "collection/review_bulk.html", context)
    reasons = params.getlist("reasons")
    try:
        if action == review.Action.REJECT:
            review.clean_reasons(reasons)
    except review.ReviewError as problem:
        context["problem"] = str(problem)
        return render(request, "collection/review_bulk.html", context, status=400)
    if (approximate or count > BULK_INLINE_LIMIT) and not settings.CELERY_TASK_ALWAYS_EAGER:
        from collection.tasks import review_bulk as review_bulk_task

        user_id = request.user.pk
        transaction.on_commit(lambda: review_bulk_task.delay(user_id, action, spec, reasons))
        messages.success(request, f"Bulk {action} of {'about ' if approximate else 'up to '}{count} dialogues is "
                                  "running in the background; "
                                  "the counts below move as it goes.")
    else:
        written = review.review_bulk(spec=spec, actor=request.user, action=action, reasons=reasons)
        verb = "Approved" if action == review.Action.APPROVE else "Rejected"
        messages.success(request, f"{verb} {written} dialogue{'s' if written != 1 else ''}"
                                  f"{f' ({count - written} skipped: open by others or already decided)' if count - written else ''}.")
    return redirect(_with_query("/review/", query))


@require_GET
@reviewer_required
def disagreements(request):
    """Disputed dialogues (double review) with each reviewer's decision."""
    spec, sort, error = _filter_from(request.GET)
    spec = {**spec, "status": Dialogue.Status.DISPUTED}
    selected = select_dialogues(spec)
    total = selected.count()
    try:
        page = max(1, int(request.GET.get("page") or 1))
    except ValueError:
        page = 1
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(page, pages)
    rows = list(selected.select_related("seed_set").only("id", "topic", "seed_set__name", "seed_set__reviews_required")
                .order_by("id")[(page - 1) * PAGE_SIZE:page * PAGE_SIZE])
    decisions = review_decisions([d.pk for d in rows])
    labels = dict(RejectReason.objects.values_list("code", "label"))
    items = [{"dialogue": d, "decisions": [(user, status, [labels.get(c, c) for c in reasons or []], when)
                                          for user, status, reasons, when in decisions.get(d.pk, [])]}
             for d in rows]
    query = _query(spec, sort)
    context = {
        "items": items, "total": total, "page": page, "pages": pages, "error": error, "query": query,
        "seed_sets": SeedSet.objects.filter(reviews_required__gt=1).only("id", "name"), "spec": spec,
        "prev_page": _with_query("/review/disagreements/", _query(spec, sort, page=page - 1)) if page > 1 else None,
        "next_page": _with_query("/review/disagreements/", _query(spec, sort, page=page + 1)) if page < pages else None,
    }
    return render(request, "collection/review_disagreements.html", context, status=400 if error else 200)


urlpatterns = [
    path("review/", queue, name="review-queue"),
    path("review/next/", next_dialogue, name="review-next"),
    path("review/bulk/", bulk, name="review-bulk"),
    path("review/undo/", undo, name="review-undo"),
    path("review/disagreements/", disagreements, name="review-disagreements"),
    path("review/<int:dialogue_id>/", dialogue_page, name="review-dialogue"),
    path("review/<int:dialogue_id>/approve/", approve, name="review-approve"),
    path("review/<int:dialogue_id>/reject/", reject, name="review-reject"),
    path("review/<int:dialogue_id>/edit/", edit_turn, name="review-edit"),
    path("review/<int:dialogue_id>/truncate/", truncate, name="review-truncate"),
    path("review/<int:dialogue_id>/lease/", lease, name="review-lease"),
]
