"""The self-chat driver: turns a generation run's seeds into dialogues, many requests in flight at once.

What a user gets: a queued GenerationRun is driven to the end by one Celery task on the `generation` queue:
  - `run.concurrency` self-chats in flight on one asyncio loop; the database work goes through a few threads;
  - each finished seed is saved atomically: its Dialogue (unique per (run, seed), so never twice) with its
    automatic filter flags, its item marked done and the run's counters incremented, all in one transaction;
  - every request's usage goes into the llm.Call ledger and the run's token/cost counters in the same
    transaction, so the run's totals are always the sum over its calls;
  - those writes go through one writer that commits whatever has queued up since its last commit in a single
    transaction (group commit): at 64 requests in flight that is a handful of statements per batch instead of a
    dozen per seed, which is what lets a 2-core machine keep up with the requests;
  - the budget (tokens and/or USD) is checked before EVERY request: once reached nothing new is sent, the
    requests in flight finish (the only overshoot), the run ends `succeeded` with budget_exhausted and the
    untouched seeds stay pending for later;
  - a seed that still fails after the client's retries is marked failed with its error, never dropped;
  - a heartbeat renews the run and its item leases; pause/cancel stop dispatching and let in-flight work
    finish; a driver that lost the run (another one took it over after a stale heartbeat) stops;
  - a worker killed mid-run: recover_stale_jobs (periodic, and at worker start) puts the run back in the queue
    and its leased items back to pending; the next driver finishes with no duplicate and no lost seed.

Modes: `transcript` (Baize v1: one completion per seed, parsed into turns) and `turns` (Baize v2 style: a simulated
human writes the next question, stopping at the AI marker, then a clean chat call answers it).
"""
import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from baize_eval.llm.client import DispatchRefused, EndpointClient, LLMError, scrub
from baize_eval.llm.dbthreads import DatabaseThreads
from baize_eval.llm.models import Call
from collection import filters
from collection.models import FINISHED, Dialogue, DialogueFlag, GenerationItem, GenerationRun, JobStatus, Seed
from collection.parsing import DEFAULT_AI_MARKERS, DEFAULT_HUMAN_MARKERS, parse_transcript, render_transcript

logger = logging.getLogger(__name__)

JOB_KIND = "generation_run"
# Database threads (and connections) per run: one for the group-commit writer, one for claims and heartbeats;
# SQLite has one writer anyway.
DB_THREADS_POSTGRES = 2
ITEM_ERROR_LIMIT = 2000
WORKER_SHUTDOWN = threading.Event()
# Most writes one group commit takes; the rest wait for the next (a transaction stays short).
WRITE_BATCH = 256


def lease_seconds():
    """An item's lease lives as long as a run's heartbeat may be silent before the run counts as stale."""
    return settings.JOB_STALE_SECONDS


def without_nul(text):
    """Postgres text cannot hold NUL characters, and a model may emit them; they carry no meaning."""
    return text.replace("\x00", "") if "\x00" in text else text


def fill_template(text, **values):
    """Replace {topic} / {transcript} literally: templates are editable data, and may hold other braces."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


@dataclass
class SeedWork:
    item_id: int
    seed_id: int
    text: str


@dataclass
class Outcome:
    """What one seed's self-chat produced, ready to be saved."""

    turns: list
    raw_output: str
    parse_error: str
    finish_reason: str
    generation: dict
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal("0")
    calls: list = field(default_factory=list)


class RunWriter:
    """Group commit for one driver: ledger rows, saved dialogues and failed seeds queue up while the previous
    transaction runs, then go to the database together. Each caller awaits its own write's result (a call id, a
    dialogue id), so nothing is reported as done before it is committed. A batch that fails is retried one write at
    a time, so one bad row only fails its own write."""

    def __init__(self, driver):
        self.driver = driver
        self.queue = []
        self.wakeup = asyncio.Event()
        self.task = None

    def start(self):
        self.task = asyncio.create_task(self._loop())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def record_call(self, row):
        return await self._submit(("call", row))

    async def save(self, work, outcome):
        return await self._submit(("save", work, outcome))

    async def fail(self, work, error):
        return await self._submit(("fail", work, error))

    async def _submit(self, op):
        future = asyncio.get_running_loop().create_future()
        self.queue.append((op, future))
        self.wakeup.set()
        return await future

    async def _loop(self):
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                batch, self.queue = self.queue[:WRITE_BATCH], self.queue[WRITE_BATCH:]
                ops = [op for op, _ in batch]
                try:
                    results = await self.driver.db.run(self.driver.write_batch, ops)
                except Exception:  # noqa: BLE001 - find the write that broke the batch; the others go in
                    logger.warning("run %s: a batch of %d writes failed; writing them one by one",
                                   self.driver.run.pk, len(ops), exc_info=True)
                    results = []
                    for op in ops:
                        try:
                            results.extend(await self.driver.db.run(self.driver.write_batch, [op]))
                        except Exception as exc:  # noqa: BLE001 - handed to the caller of this write
                            results.append(exc)
                for (_, future), result in zip(batch, results):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)


class Driver:
    def __init__(self, run, token):
        self.run = run
        self.token = token
        self.template = run.template
        self.stop_reason = None  # paused | cancelled | lost | budget | shutdown | None (running)
        self.tokens_used = run.total_tokens
        self.cost_used = run.cost_usd
        self.db = None
        self.llm = None
        self.writer = None
        self.claimed = set()  # item ids this driver leased and has not settled yet

    # --- the loop ----------------------------------------------------------------------------------------
    async def drive(self):
        size = DB_THREADS_POSTGRES if settings.IS_POSTGRES else 1
        self.db = DatabaseThreads(size, name=f"run{self.run.pk}-db")
        try:
            async with EndpointClient(self.run.endpoint, concurrency=self.run.concurrency, db=self.db) as llm:
                self.llm = llm
                self.writer = RunWriter(self)
                self.writer.start()
                heartbeat = asyncio.create_task(self._heartbeat_loop())
                try:
                    finished = await self._dispatch_loop()
                finally:
                    heartbeat.cancel()
                    await asyncio.gather(heartbeat, return_exceptions=True)
                    await self.writer.stop()
                    if self.claimed:
                        await self.db.run(self._release, list(self.claimed))
            return finished
        finally:
            await asyncio.to_thread(self.db.stop)

    async def _dispatch_loop(self):
        """Keep `concurrency` requests in flight until no seed is left or the run must stop. True when every item
        reached a final state (the caller then finishes the run)."""
        concurrency = self.run.concurrency
        # The client holds requests to `concurrency`; a few more seeds may be between their answer and their
        # commit, so a slot never waits on the database.
        max_tasks = concurrency + max(4, concurrency // 4)
        buffer = []
        tasks = set()
        all_done = False
        while self.stop_reason is None:
            if WORKER_SHUTDOWN.is_set():
                self.stop_reason = "shutdown"
                break
            if len(tasks) >= max_tasks:
                _, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            if self.budget_reached():
                self.stop_reason = "budget"
                break
            if not buffer:
                # Claim a whole batch at once: one short transaction per `concurrency` seeds, not per seed.
                buffer = await self.db.run(self._claim, limit=concurrency)
                buffer.reverse()
            if buffer:
                work = buffer.pop()
                tasks.add(asyncio.create_task(self._generate(work)))
                continue
            if tasks:
                _, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            if await self.db.run(self._finish_if_done):
                all_done = True
                break
            # Items are still leased by another (probably dead) driver: wait for their leases to expire.
            await asyncio.sleep(settings.JOB_HEARTBEAT_SECONDS)
        if buffer:
            await self.db.run(self._release, [w.item_id for w in buffer])
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return all_done

    def budget_reached(self):
        run = self.run
        if run.budget_tokens is not None and self.tokens_used >= run.budget_tokens:
            return True
        if run.budget_usd is not None and self.cost_used >= run.budget_usd:
            return True
        return False

    def may_dispatch(self):
        """The gate before every request (retries and the 2nd..nth call of a turns-mode dialogue included)."""
        if self.stop_reason in ("lost", "cancelled", "shutdown"):
            return False
        if self.budget_reached():
            self.stop_reason = self.stop_reason or "budget"
            return False
        return True

    async def _heartbeat_loop(self):
        while True:
            await asyncio.sleep(settings.JOB_HEARTBEAT_SECONDS)
            try:
                state = await self.db.run(self._beat)
            except Exception:  # noqa: BLE001 - a failed beat (DB blip) must not kill the run; the next one retries
                logger.warning("run %s: heartbeat failed", self.run.pk, exc_info=True)
                continue
            if WORKER_SHUTDOWN.is_set() and self.stop_reason is None:
                self.stop_reason = "shutdown"
            if state == "lost":
                logger.warning("run %s: another driver holds the run now; this one stops", self.run.pk)
                self.stop_reason = "lost"
            elif state in (JobStatus.PAUSED, JobStatus.CANCELLED) and self.stop_reason is None:
                self.stop_reason = state

    # --- one seed ----------------------------------------------------------------------------------------
    async def _generate(self, work):
        try:
            if self.run.mode == GenerationRun.Mode.TURNS:
                outcome = await self._turns(work)
            else:
                outcome = await self._transcript(work)
        except DispatchRefused:
            # Nothing was sent for this seed (the budget was reached first): it stays pending for later.
            await self.db.run(self._release, [work.item_id])
            return
        except LLMError as exc:
            await self._settle_failure(work, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - one seed's surprise must not stop the run; it is recorded
            logger.exception("run %s: seed %s failed unexpectedly", self.run.pk, work.seed_id)
            await self._settle_failure(work, f"internal error: {type(exc).__name__}: {exc}")
            return
        if outcome is None:
            await self.db.run(self._release, [work.item_id])
            return
        try:
            await self.writer.save(work, outcome)
        except Exception as exc:  # noqa: BLE001
            # Saving failed (a database error): record it on the item so a bad row cannot loop forever; if even
            # that fails, forget the lease and let it expire, and the seed is tried again.
            logger.exception("run %s: could not save the dialogue of seed %s", self.run.pk, work.seed_id)
            await self._settle_failure(work, f"could not save the dialogue: {type(exc).__name__}: {exc}")

    async def _settle_failure(self, work, error):
        try:
            await self.writer.fail(work, error)
        except Exception:  # noqa: BLE001 - the lease expires and the seed is tried again
            logger.exception("run %s: could not record the failure of seed %s", self.run.pk, work.seed_id)
            self.claimed.discard(work.item_id)

    async def _call(self, *, messages, purpose, stop=None):
        return await self.llm.chat(
            model=self.run.model, messages=messages, params=self.run.params, purpose=purpose, job_kind=JOB_KIND,
            job_id=self.run.pk, stop=stop, gate=self.may_dispatch, recorder=self._record_call,
        )

    async def _record_call(self, row):
        # Counted before the first await (see EndpointClient.chat): the budget gate sees this spend at once.
        self.tokens_used += row["prompt_tokens"] + row["completion_tokens"]
        self.cost_used += row["cost_usd"]
        return await self.writer.record_call(row)

    def _note(self, result, calls, purpose):
        calls.append((purpose, result))

    def _base_generation(self):
        return {
            "model": self.run.model, "endpoint": self.run.endpoint.name, "params": self.run.params,
            "mode": self.run.mode, "template": self.template.snapshot(), "max_turns": self.run.max_turns,
        }

    async def _transcript(self, work):
        prompt = fill_template(self.template.prompt, topic=work.text)
        messages = [{"role": "user", "content": prompt}]
        calls = []
        result = await self._call(messages=messages, purpose="transcript")
        self._note(result, calls, "transcript")
        parsed = parse_transcript(
            result.text, human_markers=(self.template.human_marker, *DEFAULT_HUMAN_MARKERS),
            ai_markers=(self.template.ai_marker, *DEFAULT_AI_MARKERS),
        )
        generation = self._base_generation()
        generation["prompts"] = [{"purpose": "transcript", "messages": messages}]
        return self._outcome(parsed.turns, result.text, parsed.error, result.finish_reason, generation, calls)

    async def _turns(self, work):
        tpl = self.template
        turns, raw, calls, prompts = [], [], [], []
        parse_error, stopped = "", ""
        finish_reason = ""
        for _ in range(self.run.max_turns):
            transcript = render_transcript(turns, human_marker=tpl.human_marker, ai_marker=tpl.ai_marker)
            human_messages = [{"role": "user", "content": fill_template(tpl.prompt, topic=work.text,
                                                                        transcript=transcript)}]
            try:
                human = await self._call(messages=human_messages, purpose="human", stop=[tpl.ai_marker])
            except DispatchRefused:
                if not turns:
                    raise
                stopped = self.stop_reason or "budget"
                break
            self._note(human, calls, "human")
            prompts.append({"purpose": "human", "messages": human_messages})
            raw.append(human.text)
            question = self._human_text(human.text)
            if not question:
                stopped = "human ended the conversation"
                break
            turns.append({"role": "human", "text": question})
            answer_messages = ([{"role": "system", "content": tpl.assistant_system_prompt}]
                               if tpl.assistant_system_prompt else [])
            answer_messages += [{"role": "user" if t["role"] == "human" else "assistant", "content": t["text"]}
                                for t in turns]
            try:
                answer = await self._call(messages=answer_messages, purpose="assistant")
            except DispatchRefused:
                turns.pop()
                stopped = self.stop_reason or "budget"
                break
            self._note(answer, calls, "assistant")
            prompts.append({"purpose": "assistant", "messages": answer_messages})
            raw.append(f"{tpl.ai_marker} {answer.text}")
            text = answer.text.strip()
            if not text:
                turns.pop()
                parse_error = f"turn {len(turns) + 1}: empty answer"
                break
            turns.append({"role": "ai", "text": text})
            # A cut-off answer anywhere makes the dialogue truncated, not only the last one.
            finish_reason = "length" if "length" in (finish_reason, answer.finish_reason) else answer.finish_reason
        if stopped in ("lost", "shutdown") or (not turns and stopped and stopped != "human ended the conversation"):
            # Stopped before a single answer, or the run goes on elsewhere: the seed stays pending, as if untouched.
            return None
        if not turns and not parse_error:
            parse_error = "no complete turn (the simulated human ended at once)"
        generation = self._base_generation()
        generation["prompts"] = prompts
        if stopped:
            generation["stopped"] = stopped
        return self._outcome(turns, "\n".join(raw), parse_error, finish_reason, generation, calls)

    def _human_text(self, text):
        """The simulated human's message: up to the AI marker (servers that ignore `stop`), without the human
        marker; empty when the human ends the conversation (the end marker) or writes nothing."""
        tpl = self.template
        if tpl.ai_marker and tpl.ai_marker in text:
            text = text.split(tpl.ai_marker, 1)[0]
        text = text.strip()
        for marker in (tpl.human_marker, *DEFAULT_HUMAN_MARKERS):
            if marker and text.startswith(marker):
                text = text[len(marker):].lstrip(" :").strip()
                break
        if tpl.end_marker and tpl.end_marker in text:
            return ""
        return text

    def _outcome(self, turns, raw, parse_error, finish_reason, generation, calls):
        generation["calls"] = [{"purpose": purpose, **result.usage()} for purpose, result in calls]
        results = [result for _, result in calls]
        return Outcome(
            turns=[{"role": t["role"], "text": without_nul(t["text"])} for t in turns],
            raw_output=without_nul(raw), parse_error=(parse_error or "")[:300], finish_reason=finish_reason or "",
            generation=generation, prompt_tokens=sum(c.prompt_tokens for c in results),
            completion_tokens=sum(c.completion_tokens for c in results),
            cost_usd=sum((c.cost_usd for c in results), Decimal("0")), calls=calls,
        )

    # --- database work (runs on the DB threads) ----------------------------------------------------------
    def write_batch(self, ops):
        """One group commit (see RunWriter): ledger rows, saves and failures, and the run's counters moved by their
        sum, in one transaction. Returns one result per op: a call id, a dialogue id (None when another driver
        had taken the seed over), or None for a failure."""
        results = [None] * len(ops)
        calls = [(i, Call(**op[1])) for i, op in enumerate(ops) if op[0] == "call"]
        saves = [(i, op[1], self._dialogue(op[1], op[2])) for i, op in enumerate(ops) if op[0] == "save"]
        fails = [(op[1], scrub(op[2], self.run.endpoint.api_key())[:ITEM_ERROR_LIMIT]) for op in ops if op[0] == "fail"]
        # The filters are plain CPU work: done before the transaction, so no lock waits on them.
        flags = {i: check_dialogue(dialogue, self.run, work.text) for i, work, dialogue in saves}
        done = failed = 0
        with transaction.atomic():
            if calls:
                for (i, _), call in zip(calls, Call.objects.bulk_create([call for _, call in calls])):
                    results[i] = call.pk
            if saves:
                # Only seeds this driver still holds: one taken over by another driver is theirs to save.
                held = set(self._held([work.item_id for _, work, _ in saves]))
                mine = [(i, work, dialogue) for i, work, dialogue in saves if work.item_id in held]
                GenerationItem.objects.filter(pk__in=held).update(
                    status=GenerationItem.Status.SUCCEEDED, error="", lease_expires_at=None)
                Dialogue.objects.bulk_create([dialogue for _, _, dialogue in mine])  # sets their ids (RETURNING)
                DialogueFlag.objects.bulk_create(
                    DialogueFlag(dialogue_id=dialogue.pk, rule=rule, reason=reason[:500])
                    for i, _, dialogue in mine for rule, reason in flags[i]
                )
                for i, _, dialogue in mine:
                    results[i] = dialogue.pk
                done = len(mine)
            for work, error in fails:
                failed += GenerationItem.objects.filter(
                    pk=work.item_id, lease_token=self.token, status=GenerationItem.Status.IN_FLIGHT,
                ).update(status=GenerationItem.Status.FAILED, error=error, lease_expires_at=None)
            changes = {}
            if calls:
                changes.update(
                    calls=F("calls") + len(calls),
                    estimated_calls=F("estimated_calls") + sum(c.usage_estimated for _, c in calls),
                    prompt_tokens=F("prompt_tokens") + sum(c.prompt_tokens for _, c in calls),
                    completion_tokens=F("completion_tokens") + sum(c.completion_tokens for _, c in calls),
                    cost_usd=F("cost_usd") + sum((c.cost_usd for _, c in calls), Decimal("0")),
                )
            if done:
                changes["done"] = F("done") + done
            if failed:
                changes["failed"] = F("failed") + failed
            if changes:
                # Last statement: the run row is locked only until the commit.
                GenerationRun.objects.filter(pk=self.run.pk).update(**changes)
        for _, work, _ in saves:
            self.claimed.discard(work.item_id)
        for work, _ in fails:
            self.claimed.discard(work.item_id)
        return results

    def _held(self, item_ids):
        queryset = GenerationItem.objects.filter(pk__in=item_ids, lease_token=self.token,
                                                 status=GenerationItem.Status.IN_FLIGHT)
        if settings.IS_POSTGRES:
            queryset = queryset.select_for_update()
        return queryset.values_list("pk", flat=True)

    def _dialogue(self, work, outcome):
        dialogue = Dialogue(
            seed_set_id=self.run.seed_set_id, seed_id=work.seed_id, run_id=self.run.pk, source="generated",
            topic=without_nul(work.text), original_turns=outcome.turns, raw_output=outcome.raw_output,
            parse_error=outcome.parse_error, generation=outcome.generation, finish_reason=outcome.finish_reason[:30],
            prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
            cost_usd=outcome.cost_usd,
        )
        dialogue.set_turns(list(outcome.turns))
        return dialogue

    def _claim(self, *, limit):
        now = timezone.now()
        expires = now + timedelta(seconds=lease_seconds())
        items = GenerationItem.objects.filter(run_id=self.run.pk)
        with transaction.atomic():
            ids = self._lockable(items.filter(status=GenerationItem.Status.PENDING), limit)
            if len(ids) < limit:
                # Leases of a driver that died: take them over (the sweep would put them back anyway).
                ids += self._lockable(items.filter(status=GenerationItem.Status.IN_FLIGHT, lease_expires_at__lt=now)
                                      .exclude(pk__in=ids), limit - len(ids))
            if not ids:
                return []
            claimable = Q(status=GenerationItem.Status.PENDING) | Q(status=GenerationItem.Status.IN_FLIGHT,
                                                                     lease_expires_at__lt=now)
            items.filter(claimable, pk__in=ids).update(
                status=GenerationItem.Status.IN_FLIGHT, lease_token=self.token, lease_expires_at=expires,
                attempts=F("attempts") + 1,
            )
            rows = list(items.filter(pk__in=ids, lease_token=self.token, status=GenerationItem.Status.IN_FLIGHT)
                        .values_list("pk", "seed_id"))
        texts = dict(Seed.objects.filter(pk__in=[seed_id for _, seed_id in rows]).values_list("pk", "text"))
        self.claimed.update(pk for pk, _ in rows)
        return [SeedWork(item_id=pk, seed_id=seed_id, text=texts.get(seed_id, "")) for pk, seed_id in sorted(rows)]

    @staticmethod
    def _lockable(queryset, limit):
        if settings.IS_POSTGRES:
            # Several drivers (a stale one still finishing, a new one) never wait on or take the same rows.
            queryset = queryset.select_for_update(skip_locked=True)
        return list(queryset.values_list("pk", flat=True)[:limit])

    def _release(self, item_ids):
        """Items leased but never sent back to pending (stop, pause, budget)."""
        GenerationItem.objects.filter(pk__in=item_ids, lease_token=self.token,
                                      status=GenerationItem.Status.IN_FLIGHT).update(
            status=GenerationItem.Status.PENDING, lease_token=None, lease_expires_at=None,
        )
        self.claimed.difference_update(item_ids)

    def _beat(self):
        now = timezone.now()
        if not GenerationRun.objects.filter(pk=self.run.pk, driver_token=self.token).update(heartbeat_at=now):
            return "lost"
        # Separate statements, not one transaction: a save holds an item row and then wants the run row.
        # Only the items this driver is still working on: one whose save failed is let go, and its lease expires.
        held = list(self.claimed)
        if held:
            GenerationItem.objects.filter(pk__in=held, status=GenerationItem.Status.IN_FLIGHT,
                                          lease_token=self.token).update(
                lease_expires_at=now + timedelta(seconds=lease_seconds()))
        return GenerationRun.objects.filter(pk=self.run.pk).values_list("status", flat=True).first()

    def _finish_if_done(self):
        """End the run when no item is pending or in flight. Locks the run row, like retry_failed does, so a
        seed put back to pending at the same moment is never left behind by a finished run."""
        with transaction.atomic():
            run = GenerationRun.objects.select_for_update().filter(pk=self.run.pk, driver_token=self.token).first()
            if run is None:
                self.stop_reason = "lost"
                return False
            open_items = GenerationItem.objects.filter(
                run_id=run.pk, status__in=[GenerationItem.Status.PENDING, GenerationItem.Status.IN_FLIGHT])
            if open_items.exists():
                return False
        now = timezone.now()
        with transaction.atomic():
            run = GenerationRun.objects.select_for_update().filter(pk=self.run.pk, driver_token=self.token).first()
            if run is None or run.status in FINISHED:
                return True
            status, error = JobStatus.SUCCEEDED, ""
            if run.failed and not run.done:
                status, error = JobStatus.FAILED, f"all {run.failed} seed(s) failed; see the failed seeds"
            GenerationRun.objects.filter(pk=run.pk).update(
                status=status, error=error, finished_at=now, heartbeat_at=now, driver_token=None,
            )
            enqueue_near_duplicates(run)
        return True


def check_dialogue(dialogue, run, seed_text):
    """The automatic filters' verdict on a new dialogue: [(rule, reason)]; it sets dialogue.is_flagged."""
    try:
        hits = filters.check_dialogue(
            turns=dialogue.turns, parse_error=dialogue.parse_error, finish_reason=dialogue.finish_reason,
            seed_text=seed_text, language=run.language, min_turns=run.min_turns,
        )
    except Exception:  # noqa: BLE001 - a filter bug must not lose the dialogue; it is saved unflagged
        logger.exception("run %s: the filters failed on seed %r", run.pk, seed_text[:80])
        hits = []
    dialogue.is_flagged = bool(hits)
    return hits


def enqueue_near_duplicates(run):
    """The corpus pass (near-duplicates within the run's seed set, the corpus the run adds to) as its own task
    once the run has committed: it reads every dialogue of the set, which is not the run's time to spend."""
    from collection.tasks import flag_near_duplicates

    transaction.on_commit(lambda: flag_near_duplicates.delay(run.seed_set_id))


def warm_up():
    """Load at worker start what the first run would otherwise load on its clock: the OpenAI client's modules
    (imported with this module) and the language identifier."""
    filters.detect_language("A few words of English so that the language model is loaded once.")


def drive_generation_run(*, run_id):
    """Claim a queued run and drive it until it is finished, paused, cancelled, out of budget, or taken over.
    Returns what happened, for logs: "finished", "paused", "cancelled", "budget", "lost", "not claimed"."""
    token = uuid.uuid4()
    now = timezone.now()
    claimed = GenerationRun.objects.filter(pk=run_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, driver_token=token, started_at=Coalesce(F("started_at"), now), heartbeat_at=now,
        finished_at=None, error="",
    )
    if not claimed:
        return "not claimed"
    run = GenerationRun.objects.select_related("endpoint", "template", "seed_set").get(pk=run_id)
    driver = Driver(run, token)
    try:
        finished = asyncio.run(driver.drive())
    except Exception as exc:  # noqa: BLE001 - the run row must say why it stopped
        logger.exception("run %s: driver failed", run_id)
        GenerationRun.objects.filter(pk=run_id, driver_token=token).exclude(status__in=FINISHED).update(
            status=JobStatus.FAILED, error=scrub(f"{type(exc).__name__}: {exc}", run.endpoint.api_key())[:2000],
            finished_at=timezone.now(), driver_token=None,
        )
        return "failed"
    if finished:
        return "finished"
    reason = driver.stop_reason or "stopped"
    mine = GenerationRun.objects.filter(pk=run_id, driver_token=token)
    if reason == "budget":
        now = timezone.now()
        untouched = GenerationItem.objects.filter(run_id=run_id, status=GenerationItem.Status.PENDING).exists()
        mine.filter(status=JobStatus.RUNNING).update(
            status=JobStatus.SUCCEEDED, budget_exhausted=untouched, finished_at=now, heartbeat_at=now,
            driver_token=None,
        )
        enqueue_near_duplicates(run)
    elif reason == "shutdown":
        # The worker is going away: the run goes back to the queue for another worker (or this one, restarted).
        with transaction.atomic():
            if mine.filter(status=JobStatus.RUNNING).update(status=JobStatus.QUEUED, driver_token=None,
                                                            heartbeat_at=timezone.now()):
                from collection.services import enqueue_drive

                enqueue_drive(run_id)
        mine.update(driver_token=None)
    elif reason != "lost":
        mine.update(driver_token=None)
    return reason


def request_stop():
    """The worker is shutting down (Celery's worker_shutting_down): every driver in this process stops sending,
    lets its requests in flight finish, and hands its run back to the queue, so a warm shutdown takes seconds
    rather than the rest of the run."""
    WORKER_SHUTDOWN.set()
