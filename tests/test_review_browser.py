"""The review flow in headless Chromium against a live server: log in, open the queue, review with the keyboard
(approve, edit a turn, reject with a reason, undo), and untrusted text that never runs. Screenshots of each page
go to var/screenshots/ for a look by eye."""
from pathlib import Path

import pytest
from django.db import connections

from collection.models import Dialogue, DialogueFlag, RejectReason, ReviewEvent
from collection.review import review_approve, review_reject
from tests.conftest import make_user
from tests.factories import make_dialogue, make_seed_set, make_seeds

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
EVIL = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script>'


def default_reasons():
    # Transactional tests flush the tables, including the rows migration 0002 adds; put them back.
    from importlib import import_module

    reasons = import_module("collection.migrations.0002_review_search_and_reasons").DEFAULT_REASONS
    for code, label in reasons:
        RejectReason.objects.get_or_create(code=code, defaults={"label": label})


@pytest.fixture
def browser(monkeypatch):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    # Playwright's sync API keeps an event loop on this thread; the ORM calls below are still plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        yield page
        # While Playwright's event loop is on this thread, Django keeps the ORM connection of the test body in a
        # context variable rather than the thread's usual slot; close it here, in that same state, or it outlives
        # the test and blocks dropping the test database.
        connections.close_all()
        context.close()
        browser.close()


def log_in(page, live_server, next_url):
    page.goto(f"{live_server.url}{next_url}")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", "pw-rita")
    with page.expect_navigation():
        page.click("button[type=submit]")


def press(page, key):
    with page.expect_navigation():
        page.keyboard.press(key)


def path_of(page, live_server):
    return page.url.removeprefix(live_server.url)


def xss_ran(page):
    return page.evaluate("() => typeof window.__xss !== 'undefined'")


def test_it_reviews_with_the_keyboard_end_to_end(browser, live_server):
    page = browser
    default_reasons()
    reviewer = make_user("rita", "reviewer")
    seed_set = make_seed_set("garden")
    seed = make_seeds(seed_set, ["How do I keep basil alive?"])[0]
    first = make_dialogue(seed_set, seed=seed, topic=f"Basil {EVIL}", raw_output=f"[|Human|] raw {EVIL}",
                          generation={"model": "gpt-4o-mini", "params": {"temperature": 0.7},
                                      "template": {"name": "baize-transcript", "version": 1},
                                      "calls": [{"purpose": "transcript", "latency_ms": 640, "finish_reason": "stop",
                                                 "usage": {"prompt_tokens": 212, "completion_tokens": 388}}]},
                          turns=[{"role": "human", "text": f"How do I keep **basil** alive? {EVIL}"},
                                 {"role": "ai", "text": "Give it sun:\n\n- 6 hours a day\n- water when dry\n\n```\nwater()\n```"}])
    second = make_dialogue(seed_set, topic="Tomatoes")
    third = make_dialogue(seed_set, topic="Mint")

    log_in(page, live_server, "/review/")
    assert path_of(page, live_server) == "/review/"
    assert page.locator("#queue-table tbody tr").count() == 3
    page.screenshot(path=SHOTS / "review_queue.png", full_page=True)

    press(page, "n")  # review next: the first undecided dialogue opens, leased to me
    assert path_of(page, live_server) == f"/review/{first.pk}/"
    assert Dialogue.objects.get(pk=first.pk).lease_holder == reviewer
    assert page.locator(".turn.ai .md li").count() == 2 and page.locator(".turn.human strong").inner_text() == "basil"
    page.screenshot(path=SHOTS / "review_dialogue.png", full_page=True)

    press(page, "a")  # approve: the next undecided opens
    assert Dialogue.objects.get(pk=first.pk).status == "approved"
    assert path_of(page, live_server) == f"/review/{second.pk}/"

    page.keyboard.press("e")  # edit: the first turn's editor, focused
    editor = page.locator("#turn-0 textarea")
    assert editor.evaluate("el => el === document.activeElement")
    editor.fill("How often should tomatoes be watered?")
    page.screenshot(path=SHOTS / "review_dialogue_editing.png", full_page=True)
    press(page, "Control+Enter")
    fresh = Dialogue.objects.get(pk=second.pk)
    assert fresh.turns[0]["text"] == "How often should tomatoes be watered?" and fresh.version == 2
    assert path_of(page, live_server) == f"/review/{second.pk}/"
    assert "How often should tomatoes be watered?" in page.locator("#turn-0 .md").inner_text()

    page.keyboard.press("r")  # reject: reasons panel, 1 picks the first reason, Enter rejects
    assert page.locator("#reject-panel").evaluate("el => el.open")
    page.keyboard.press("1")
    page.screenshot(path=SHOTS / "review_dialogue_rejecting.png", full_page=True)
    first_reason = page.locator("#reject-form input[data-key='1']").get_attribute("value")
    press(page, "Enter")
    fresh = Dialogue.objects.get(pk=second.pk)
    assert fresh.status == "rejected"
    assert ReviewEvent.objects.get(dialogue=second, action="reject").reasons == [first_reason]
    assert path_of(page, live_server) == f"/review/{third.pk}/"

    press(page, "u")  # undo my last action (the reject): that dialogue opens again, undecided, edit kept
    assert path_of(page, live_server) == f"/review/{second.pk}/"
    fresh = Dialogue.objects.get(pk=second.pk)
    assert fresh.status == "undecided" and fresh.turns[0]["text"] == "How often should tomatoes be watered?"
    assert page.locator("#history tr.undone").count() == 1
    page.screenshot(path=SHOTS / "review_dialogue_after_undo.png", full_page=True)

    press(page, "k")  # previous in the filter
    assert path_of(page, live_server) == f"/review/{first.pk}/"
    press(page, "j")
    assert path_of(page, live_server) == f"/review/{second.pk}/"

    page.goto(f"{live_server.url}/review/")
    assert "1 of 3 decided" in page.locator("#progress").inner_text()
    page.screenshot(path=SHOTS / "review_queue_after.png", full_page=True)
    assert not xss_ran(page) and page.errors == []


def test_it_never_runs_script_from_a_dialogue_on_any_review_page(browser, live_server):
    page = browser
    default_reasons()
    make_user("rita", "reviewer")
    rob = make_user("rob", "reviewer")
    seed_set = make_seed_set(f"set {EVIL}", reviews_required=2)
    seed = make_seeds(seed_set, [f"seed {EVIL}"])[0]
    evil = make_dialogue(
        seed_set, seed=seed, topic=f"topic {EVIL}", raw_output=f"raw {EVIL}", parse_error=f"err {EVIL}",
        turns=[{"role": "human", "text": f"q {EVIL} [x](javascript:window.__xss=3)"}, {"role": "ai", "text": f"a {EVIL}"}],
        generation={"model": EVIL, "params": {EVIL: EVIL}, "template": {"name": EVIL, "version": 1},
                    "calls": [{"purpose": EVIL, "finish_reason": EVIL}]},
    )
    DialogueFlag.objects.create(dialogue=evil, rule="refusal", reason=f"reason {EVIL}")
    Dialogue.objects.filter(pk=evil.pk).update(is_flagged=True)
    review_reject(dialogue=evil, actor=rob, expected_version=1, reasons=["other"], note=f"note {EVIL}")
    log_in(page, live_server, f"/review/{evil.pk}/")
    assert path_of(page, live_server) == f"/review/{evil.pk}/"
    review_approve(dialogue=Dialogue.objects.get(pk=evil.pk), actor=make_user("ray", "reviewer"), expected_version=2)
    page.screenshot(path=SHOTS / "review_dialogue_untrusted.png", full_page=True)
    assert not xss_ran(page)
    assert page.locator("a[href^='javascript']").count() == 0
    for url, shot in [("/review/", "review_queue_untrusted.png"), ("/review/disagreements/", "review_disagreements.png"),
                      ("/review/bulk/?action=reject", "review_bulk_confirm.png"), (f"/review/{evil.pk}/", None)]:
        page.goto(f"{live_server.url}{url}")
        if shot:
            page.screenshot(path=SHOTS / shot, full_page=True)
        assert not xss_ran(page), url
    assert "topic <img" in page.locator("#topic").inner_text()  # shown as text, not as an element
    assert page.errors == []
