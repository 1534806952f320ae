"""Review pages: who may see them, the queue's filters and counts, the dialogue page, actions, bulk, disagreements,
and untrusted text that stays inert."""
import re

import pytest
from django.db import connection

from collection.models import Dialogue, DialogueFlag, ReviewEvent
from collection.review import lease_acquire, review_approve, review_reject
from tests.factories import make_dialogue, make_seed_set, make_seeds

pytestmark = pytest.mark.django_db

XSS_IMG = '<img src=x onerror="window.__xss=1">'
XSS_SCRIPT = "<script>window.__xss=2</script>"
EVIL = f"{XSS_IMG} and {XSS_SCRIPT}"


@pytest.fixture(autouse=True)
def fresh_cache():
    from django.core.cache import cache

    cache.clear()  # per-reviewer counts are cached for a few seconds


@pytest.fixture
def seed_set(db):
    return make_seed_set()


@pytest.fixture
def dialogue(seed_set):
    return make_dialogue(seed_set)


def html(response):
    return response.content.decode()


def flag(dialogue, rule, reason="because"):
    DialogueFlag.objects.create(dialogue=dialogue, rule=rule, reason=reason)
    Dialogue.objects.filter(pk=dialogue.pk).update(is_flagged=True)


# --- Who may do what -------------------------------------------------------------------------------------------

PAGES = ["/review/", "/review/{id}/", "/review/disagreements/", "/review/bulk/?action=approve"]
POSTS = [
    ("/review/{id}/approve/", {"version": 1}),
    ("/review/{id}/reject/", {"version": 1, "reasons": "unsafe"}),
    ("/review/{id}/edit/", {"version": 1, "turn_index": 0, "text": "new"}),
    ("/review/{id}/truncate/", {"version": 1, "turn_index": 2}),
    ("/review/undo/", {"dialogue": "{id}", "version": 1}),
    ("/review/{id}/lease/", {}),
    ("/review/bulk/", {"action": "approve"}),
]


@pytest.mark.parametrize("url", PAGES + ["/review/next/"])
def test_it_sends_anonymous_visitors_to_the_login_page(client, dialogue, url):
    response = client.get(url.format(id=dialogue.pk))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("url", PAGES + ["/review/next/"])
def test_it_refuses_raters_and_outsiders(as_rater, as_outsider, dialogue, url):
    assert as_rater.get(url.format(id=dialogue.pk)).status_code == 403
    assert as_outsider.get(url.format(id=dialogue.pk)).status_code == 403


@pytest.mark.parametrize("url", PAGES)
def test_it_shows_the_pages_to_reviewers_and_admins(as_reviewer, as_admin, dialogue, url):
    assert as_reviewer.get(url.format(id=dialogue.pk)).status_code == 200
    assert as_admin.get(url.format(id=dialogue.pk)).status_code == 200


@pytest.mark.parametrize("url,data", POSTS)
def test_it_refuses_actions_from_anonymous_raters_and_outsiders(client, as_rater, as_outsider, dialogue, url, data):
    url = url.format(id=dialogue.pk)
    data = {k: (v.format(id=dialogue.pk) if isinstance(v, str) else v) for k, v in data.items()}
    assert client.post(url, data)["Location"].startswith("/accounts/login/")
    assert as_rater.post(url, data).status_code == 403
    assert as_outsider.post(url, data).status_code == 403
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    assert fresh.version == 1 and fresh.lease_holder is None and not ReviewEvent.objects.exists()


def test_it_refuses_get_on_actions(as_reviewer, dialogue):
    assert as_reviewer.get(f"/review/{dialogue.pk}/approve/").status_code == 405
    assert Dialogue.objects.get(pk=dialogue.pk).status == "undecided"


# --- Queue -----------------------------------------------------------------------------------------------------

def test_it_filters_the_queue_and_counts_per_status_and_flag(as_reviewer, reviewer, seed_set):
    other = make_seed_set("other")
    basil = make_dialogue(seed_set, topic="Basil indoors")
    tomato = make_dialogue(seed_set, topic="Tomato blight", turns=[
        {"role": "human", "text": "Why do tomato leaves curl?"}, {"role": "ai", "text": "Heat stress or viruses."}])
    refusal = make_dialogue(seed_set, topic="Refusal")
    elsewhere = make_dialogue(other, topic="Elsewhere")
    flag(refusal, "refusal")
    review_approve(dialogue=basil, actor=reviewer, expected_version=1)

    page = html(as_reviewer.get(f"/review/?seed_set={seed_set.pk}"))
    assert f'href="/review/{elsewhere.pk}/' not in page
    assert all(f'href="/review/{d.pk}/?seed_set={seed_set.pk}"' in page for d in (basil, tomato, refusal))
    counts = dict(re.findall(r'>(all|undecided|approved|rejected|disputed) <b>(\d+)</b>', page))
    assert counts == {"all": "3", "undecided": "2", "approved": "1", "rejected": "0", "disputed": "0"}
    flag_counts = dict(re.findall(r'>([a-z_ ]+) <b>(\d+)</b>', page.split('id="flag-counts"')[1].split("</div>")[0]))
    assert flag_counts["any flag"] == "1" and flag_counts["no flag"] == "2" and flag_counts["refusal"] == "1"
    assert "<strong>1</strong> of 3 decided (33.3%)" in page

    page = html(as_reviewer.get(f"/review/?seed_set={seed_set.pk}&status=undecided&flag=refusal"))
    assert f'href="/review/{refusal.pk}/' in page and f'href="/review/{tomato.pk}/' not in page
    counts = dict(re.findall(r'>(all|undecided|approved) <b>(\d+)</b>', page))  # status chips: under the flag filter
    assert counts == {"all": "1", "undecided": "1", "approved": "0"}
    flag_counts = dict(re.findall(r'>([a-z_ ]+) <b>(\d+)</b>', page.split('id="flag-counts"')[1].split("</div>")[0]))
    assert (flag_counts["any flag"], flag_counts["no flag"], flag_counts["refusal"]) == ("1", "1", "1")  # undecided
    page = html(as_reviewer.get(f"/review/?seed_set={seed_set.pk}&status=approved&flag=none"))
    counts = dict(re.findall(r'>(all|undecided|approved) <b>(\d+)</b>', page))
    assert counts == {"all": "2", "undecided": "1", "approved": "1"}
    flag_counts = dict(re.findall(r'>([a-z_ ]+) <b>(\d+)</b>', page.split('id="flag-counts"')[1].split("</div>")[0]))
    assert (flag_counts["any flag"], flag_counts["no flag"], flag_counts["refusal"]) == ("0", "1", "0")  # approved
    page = html(as_reviewer.get("/review/?min_turns=3&max_length=100000"))
    assert f'href="/review/{basil.pk}/' in page and f'href="/review/{tomato.pk}/' not in page
    page = html(as_reviewer.get("/review/?max_turns=2"))
    assert f'href="/review/{tomato.pk}/' in page and f'href="/review/{basil.pk}/' not in page
    page = html(as_reviewer.get("/review/?q=curling+tomatoes"))  # full-text: stems match "curl"/"tomato"
    assert f'href="/review/{tomato.pk}/' in page and f'href="/review/{basil.pk}/' not in page
    page = html(as_reviewer.get("/review/?sort=-turns"))
    assert page.index(f'href="/review/{basil.pk}/') < page.index(f'href="/review/{tomato.pk}/')
    page = html(as_reviewer.get("/review/?sort=turns"))
    assert page.index(f'href="/review/{tomato.pk}/') < page.index(f'href="/review/{basil.pk}/')


def test_it_links_review_next_and_the_export_to_the_same_selection(as_reviewer, seed_set, dialogue):
    page = html(as_reviewer.get(f"/review/?seed_set={seed_set.pk}&flag=none&q=basil"))
    query = f"seed_set={seed_set.pk}&amp;flag=none&amp;q=basil"
    assert f'href="/exports/new/?{query}"' in page
    assert f'href="/review/next/?{query}"' in page
    assert f'href="/review/bulk/?action=approve&amp;{query}"' in page


def test_it_counts_broad_text_searches_exactly_up_to_a_cap_then_labels_an_estimate(as_reviewer, seed_set, monkeypatch):
    from collection.views import review as review_views

    monkeypatch.setattr(review_views, "COUNT_CAP", 3)
    for n in range(5):
        make_dialogue(seed_set, topic=f"Basil {n}")
    make_dialogue(seed_set, topic="Mint", turns=[{"role": "human", "text": "Mint tea?"}, {"role": "ai", "text": "Yes."}])
    page = html(as_reviewer.get("/review/?q=mint"))  # under the cap: exact everywhere
    assert '<strong id="selection-count">1</strong>' in page and ">undecided <b>1</b>" in page
    page = html(as_reviewer.get("/review/?q=basil"))  # over the cap: estimates, labeled as such
    assert "(approximate)" in page and 'id="approximate-note"' in page
    assert ">undecided <b>≈" in page and ">refusal <b>≈" in page and '<strong id="selection-count" title' in page
    assert page.count("<tr data-href") == 5
    page = html(as_reviewer.get(f"/review/?seed_set={seed_set.pk}"))  # index-covered filters stay exact
    assert '<strong id="selection-count">6</strong>' in page and ">undecided <b>6</b>" in page


def test_it_falls_back_to_labeled_estimates_when_counting_exceeds_the_budget(as_reviewer, seed_set, monkeypatch):
    from collection.views import review as review_views

    for _ in range(3):
        make_dialogue(seed_set)
    monkeypatch.setattr(review_views, "COUNT_BUDGET_MS", 1000)
    assert '<strong id="selection-count">3</strong>' in html(as_reviewer.get(f"/review/?seed_set={seed_set.pk}"))
    real_exact = review_views._exact_counts

    def slow_exact(*args, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.5)")  # a count the database cannot finish within the budget
        return real_exact(*args, **kwargs)

    monkeypatch.setattr(review_views, "_exact_counts", slow_exact)
    monkeypatch.setattr(review_views, "COUNT_BUDGET_MS", 50)
    page = html(as_reviewer.get(f"/review/?seed_set={seed_set.pk}"))
    assert '<strong id="selection-count" title' in page and "(approximate)" in page
    assert page.count("<tr data-href") == 3


def test_it_searches_the_current_text_after_an_edit(as_reviewer, dialogue):
    as_reviewer.post(f"/review/{dialogue.pk}/edit/", {"version": 1, "turn_index": 1, "text": "Use a grow lamp."})
    assert f'href="/review/{dialogue.pk}/' in html(as_reviewer.get("/review/?q=lamp"))
    assert f'href="/review/{dialogue.pk}/' not in html(as_reviewer.get("/review/?q=sunny"))


def test_it_explains_a_bad_filter(as_reviewer, dialogue):
    response = as_reviewer.get("/review/?min_turns=lots")
    assert response.status_code == 400 and "min_turns" in html(response)
    assert as_reviewer.get("/review/?sort=colour").status_code == 400


def test_it_paginates_the_queue(as_reviewer, seed_set):
    dialogues = [make_dialogue(seed_set) for _ in range(53)]
    first = html(as_reviewer.get("/review/"))
    assert f'href="/review/{dialogues[49].pk}/"' in first and f'href="/review/{dialogues[50].pk}/"' not in first
    assert "page 1 of 2" in first and 'href="/review/?page=2"' in first
    second = html(as_reviewer.get("/review/?page=2"))
    assert f'href="/review/{dialogues[52].pk}/"' in second and f'href="/review/{dialogues[0].pk}/"' not in second


def test_it_counts_decisions_per_reviewer_today_and_all_time(as_reviewer, reviewer, reviewer2, seed_set):
    from datetime import timedelta

    from django.utils import timezone

    for _ in range(3):
        review_approve(dialogue=make_dialogue(seed_set), actor=reviewer, expected_version=1)
    review_reject(dialogue=make_dialogue(seed_set), actor=reviewer2, expected_version=1, reasons=["unsafe"])
    ReviewEvent.objects.filter(actor=reviewer).order_by("id").filter(
        pk=ReviewEvent.objects.filter(actor=reviewer).order_by("id").first().pk
    ).update(created_at=timezone.now() - timedelta(days=3))
    page = html(as_reviewer.get("/review/"))
    table = page.split('id="reviewer-counts"')[1].split("</table>")[0]
    assert re.search(r"<td>rita</td><td class=\"num\">2</td><td class=\"num\">3</td>", table)
    assert re.search(r"<td>rob</td><td class=\"num\">1</td><td class=\"num\">1</td>", table)


def test_it_renders_the_queue_in_a_bounded_number_of_queries(as_reviewer, seed_set, django_assert_max_num_queries):
    for n in range(30):
        d = make_dialogue(seed_set)
        if n % 3 == 0:
            flag(d, "refusal")
    as_reviewer.get("/review/")  # warm the session and role caches
    with django_assert_max_num_queries(14):
        assert as_reviewer.get("/review/?flag=any&q=basil").status_code == 200


# --- Review next, the dialogue page, actions ---------------------------------------------------------------

def test_it_opens_the_next_undecided_dialogue_of_the_filter(as_reviewer, reviewer, reviewer2, seed_set):
    done, leased, free = (make_dialogue(seed_set) for _ in range(3))
    review_approve(dialogue=done, actor=reviewer2, expected_version=1)
    lease_acquire(dialogue=leased, actor=reviewer2)
    response = as_reviewer.get(f"/review/next/?seed_set={seed_set.pk}")
    assert response["Location"] == f"/review/{free.pk}/?seed_set={seed_set.pk}"
    assert Dialogue.objects.get(pk=free.pk).lease_holder == reviewer
    review_approve(dialogue=free, actor=reviewer, expected_version=1)
    response = as_reviewer.get(f"/review/next/?seed_set={seed_set.pk}", follow=True)
    assert response.redirect_chain[-1][0] == f"/review/?seed_set={seed_set.pk}"
    assert "Nothing left to review" in html(response)


def test_it_shows_the_dialogue_with_metadata_flags_and_history(as_reviewer, reviewer, reviewer2, seed_set):
    seed = make_seeds(seed_set, ["How to keep basil alive"])[0]
    dialogue = make_dialogue(
        seed_set, seed=seed, raw_output="[|Human|] How do I keep basil alive? RAW-MARK", finish_reason="stop",
        turns=[{"role": "human", "text": "How do I keep **basil** alive?"}, {"role": "ai", "text": "`water` it"}],
        generation={"model": "gpt-4o-mini", "params": {"temperature": 0.7}, "template": {"name": "baize", "version": 3},
                    "calls": [{"purpose": "transcript", "usage": {"prompt_tokens": 120, "completion_tokens": 340},
                               "latency_ms": 812, "finish_reason": "stop"}]},
    )
    flag(dialogue, "too_few_turns", "2 turns, fewer than the minimum 4")
    review_reject(dialogue=dialogue, actor=reviewer2, expected_version=1, reasons=["off-topic"], note="drifts")
    page = html(as_reviewer.get(f"/review/{dialogue.pk}/"))
    assert "<strong>basil</strong>" in page and "<code>water</code>" in page
    assert "RAW-MARK" in page and "How to keep basil alive" in page
    assert "too_few_turns" in page and "2 turns, fewer than the minimum 4" in page
    assert "gpt-4o-mini" in page and "baize v3" in page and "temperature" in page and "812" in page
    assert "120/340" in page
    history = page.split('id="history"')[1]
    assert "rob" in history and "reject" in history and "Off-topic" in history and "drifts" in history
    assert Dialogue.objects.get(pk=dialogue.pk).lease_holder == reviewer


def test_it_says_who_has_a_dialogue_open(as_reviewer, reviewer2, dialogue):
    lease_acquire(dialogue=dialogue, actor=reviewer2)
    page = html(as_reviewer.get(f"/review/{dialogue.pk}/"))
    assert "Open by rob until" in page
    assert Dialogue.objects.get(pk=dialogue.pk).lease_holder == reviewer2


def test_it_approves_and_opens_the_next_undecided_of_the_same_filter(as_reviewer, seed_set):
    first, second = make_dialogue(seed_set), make_dialogue(seed_set)
    make_dialogue(make_seed_set("other"))
    response = as_reviewer.post(f"/review/{first.pk}/approve/", {"version": 1, "seed_set": seed_set.pk}, follow=True)
    assert Dialogue.objects.get(pk=first.pk).status == "approved"
    assert response.redirect_chain[-1][0] == f"/review/{second.pk}/?seed_set={seed_set.pk}"


def test_it_rejects_with_reasons_and_refuses_a_reject_without_one(as_reviewer, dialogue):
    response = as_reviewer.post(f"/review/{dialogue.pk}/reject/", {"version": 1})
    assert response.status_code == 400 and "pick at least one reason" in html(response)
    as_reviewer.post(f"/review/{dialogue.pk}/reject/", {"version": 1, "reasons": ["unsafe", "malformed"], "note": "n"})
    event = ReviewEvent.objects.get()
    assert event.reasons == ["unsafe", "malformed"] and event.note == "n"
    assert Dialogue.objects.get(pk=dialogue.pk).status == "rejected"


def test_it_edits_and_truncates_turns_staying_on_the_dialogue(as_reviewer, dialogue):
    response = as_reviewer.post(f"/review/{dialogue.pk}/edit/", {"version": 1, "turn_index": 1, "text": "Better."})
    assert response["Location"] == f"/review/{dialogue.pk}/"
    response = as_reviewer.post(f"/review/{dialogue.pk}/truncate/", {"version": 2, "turn_index": 2})
    assert response["Location"] == f"/review/{dialogue.pk}/"
    fresh = Dialogue.objects.get(pk=dialogue.pk)
    assert fresh.turns[1]["text"] == "Better." and fresh.num_turns == 2 and fresh.version == 3


def test_it_refuses_a_stale_save_and_shows_the_current_version(as_reviewer, reviewer2, dialogue):
    review_approve(dialogue=dialogue, actor=reviewer2, expected_version=1)
    response = as_reviewer.post(f"/review/{dialogue.pk}/edit/", {"version": 1, "turn_index": 1, "text": "My draft"})
    assert response.status_code == 409
    page = html(response)
    assert "changed by rob" in page and "current version is 2" in page and "My draft" in page
    assert 'name="version" value="2"' in page
    assert Dialogue.objects.get(pk=dialogue.pk).turns[1]["text"] != "My draft"


def test_it_undoes_my_last_action_and_opens_that_dialogue(as_reviewer, reviewer, seed_set):
    first, second = make_dialogue(seed_set), make_dialogue(seed_set)
    as_reviewer.post(f"/review/{first.pk}/reject/", {"version": 1, "reasons": "unsafe"})
    page = html(as_reviewer.get(f"/review/{second.pk}/"))
    assert f'name="dialogue" value="{first.pk}"' in page and "reject on dialogue" in page
    response = as_reviewer.post("/review/undo/", {"dialogue": first.pk, "version": 2})
    assert response["Location"] == f"/review/{first.pk}/"
    assert Dialogue.objects.get(pk=first.pk).status == "undecided"
    assert ReviewEvent.objects.filter(action="undo", actor=reviewer).count() == 1


def test_it_renews_and_releases_the_lease(as_reviewer, reviewer, client, dialogue):
    data = as_reviewer.post(f"/review/{dialogue.pk}/lease/").json()
    assert data["held"] is True and data["holder"] == "rita"
    assert as_reviewer.post(f"/review/{dialogue.pk}/lease/", {"release": "1"}).json() == {"held": False}
    assert Dialogue.objects.get(pk=dialogue.pk).lease_holder is None


# --- Bulk and disagreements ----------------------------------------------------------------------------------

def test_it_confirms_bulk_decisions_with_the_count_then_applies_them(as_reviewer, reviewer2, seed_set):
    picked = [make_dialogue(seed_set) for _ in range(3)]
    leased = make_dialogue(seed_set)
    lease_acquire(dialogue=leased, actor=reviewer2)
    other = make_dialogue(make_seed_set("other"))
    page = html(as_reviewer.get(f"/review/bulk/?action=approve&seed_set={seed_set.pk}"))
    assert "Approve 4 dialogues?" in page and "1 of them is open by other reviewers" in page
    assert not ReviewEvent.objects.exists()
    response = as_reviewer.post("/review/bulk/", {"action": "approve", "seed_set": seed_set.pk}, follow=True)
    assert "Approved 3 dialogues (1 skipped" in html(response)
    assert all(Dialogue.objects.get(pk=d.pk).status == "approved" for d in picked)
    assert Dialogue.objects.get(pk=leased.pk).status == "undecided"
    assert Dialogue.objects.get(pk=other.pk).status == "undecided"


def test_it_needs_a_reason_for_a_bulk_reject(as_reviewer, dialogue):
    response = as_reviewer.post("/review/bulk/", {"action": "reject"})
    assert response.status_code == 400 and "reasons" in html(response)
    as_reviewer.post("/review/bulk/", {"action": "reject", "reasons": "duplicate"})
    assert Dialogue.objects.get(pk=dialogue.pk).status == "rejected"


def test_it_lists_disagreements_with_each_reviewers_decision(as_reviewer, reviewer, reviewer2):
    seed_set = make_seed_set("double", reviews_required=2)
    split, agreed = make_dialogue(seed_set, topic="Split topic"), make_dialogue(seed_set, topic="Agreed topic")
    review_approve(dialogue=split, actor=reviewer, expected_version=1)
    review_reject(dialogue=split, actor=reviewer2, expected_version=2, reasons=["factual-error"])
    review_approve(dialogue=agreed, actor=reviewer, expected_version=1)
    review_approve(dialogue=agreed, actor=reviewer2, expected_version=2)
    page = html(as_reviewer.get("/review/disagreements/"))
    assert "Split topic" in page and "Agreed topic" not in page
    row = page.split("Split topic")[1].split("</tr>")[0]
    assert re.search(r"<strong>rita</strong>: <span class=\"status approved\">approved", row)
    assert re.search(r"<strong>rob</strong>: <span class=\"status rejected\">rejected", row) and "Factual error" in row


# --- Untrusted text --------------------------------------------------------------------------------------------

def test_it_never_emits_markup_from_dialogue_text_on_any_page(as_reviewer, reviewer, reviewer2):
    seed_set = make_seed_set(f"set {EVIL}", reviews_required=2)
    seed = make_seeds(seed_set, [f"seed {EVIL}"])[0]
    dialogue = make_dialogue(
        seed_set, seed=seed, topic=f"topic {EVIL}", raw_output=f"raw {EVIL}", parse_error=f"err {EVIL}",
        turns=[{"role": "human", "text": f"q {EVIL} [x](javascript:alert(1))"}, {"role": "ai", "text": f"a {EVIL}"}],
        generation={"model": f"m {EVIL}", "params": {EVIL: EVIL}, "template": {"name": EVIL, "version": EVIL},
                    "calls": [{"purpose": EVIL, "finish_reason": EVIL, "usage": {"prompt_tokens": EVIL}}]},
        finish_reason="stop",
    )
    flag(dialogue, "refusal", f"reason {EVIL}")
    review_reject(dialogue=dialogue, actor=reviewer, expected_version=1, reasons=["other"], note=f"note {EVIL}")
    review_approve(dialogue=dialogue, actor=reviewer2, expected_version=2)
    as_reviewer.post(f"/review/{dialogue.pk}/edit/", {"version": 3, "turn_index": 1, "text": f"edited {EVIL}"})
    pages = [
        as_reviewer.get("/review/"), as_reviewer.get(f"/review/{dialogue.pk}/"), as_reviewer.get("/review/disagreements/"),
        as_reviewer.get("/review/bulk/?action=approve&q=topic"),
        as_reviewer.post(f"/review/{dialogue.pk}/edit/", {"version": 1, "turn_index": 0, "text": f"draft {EVIL}"}),
    ]
    assert [p.status_code for p in pages] == [200, 200, 200, 200, 409]
    for response in pages:
        page = html(response)
        assert "<img" not in page
        assert "<script>window" not in page
        assert 'href="javascript:' not in page
    dialogue_page = html(pages[1])
    assert "&lt;img src=x onerror=" in dialogue_page and "&lt;script&gt;window.__xss=2&lt;/script&gt;" in dialogue_page
