"""`python manage.py selfchat --set NAME --model MODEL [--base-url URL | --endpoint NAME] [--mode transcript|turns]
[--template NAME] [--max-turns N] [--concurrency N] [--budget-usd X] [--budget-tokens N] [--sample N] [--wait]`

What a user gets: a self-chat generation run over the seed set NAME, queued for the workers; the run id printed
alone on stdout (scripts can capture it). With --wait, a progress bar (done / failed / in flight / tokens / cost)
read from the run row, and the exit status says how it ended: 0 succeeded, 1 failed, 2 cancelled. In the embedded
mode (no CELERY_BROKER_URL) the run executes right here, in this process, and the command waits for it.

--base-url without --endpoint finds the endpoint with that URL or creates one (its key is read from the
environment variable --api-key-env names, OPENAI_API_KEY by default; the key itself is never stored or shown).
Without either, OPENAI_BASE_URL is used.
"""
import json
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from baize_eval.llm.models import Endpoint, ModelPrice
from collection.models import GenerationRun, JobStatus, SeedSet, SelfChatTemplate
from baize_eval.celery import app
from collection.services import (
    RunSpecError, endpoint_for_base_url, generation_run_progress, generation_run_start, wait_for_local_drivers,
)
from collection.templates_default import latest_template

EXIT = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.CANCELLED: 2}


class Command(BaseCommand):
    help = "Start a self-chat generation run over a seed set; prints the run id (with --wait, follows it to the end)."

    def add_arguments(self, parser):
        parser.add_argument("--set", dest="seed_set", required=True, help="Seed set name.")
        parser.add_argument("--model", required=True, help="Model name the endpoint serves, e.g. gpt-4o-mini.")
        parser.add_argument("--base-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1.")
        parser.add_argument("--endpoint", help="Name of a configured endpoint (admin → Endpoints).")
        parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                            help="For an endpoint created from --base-url: the environment variable with its key.")
        parser.add_argument("--mode", choices=GenerationRun.Mode.values, default=GenerationRun.Mode.TRANSCRIPT)
        parser.add_argument("--template", help="Self-chat template name (its newest version); default: the "
                                               "built-in template of the mode.")
        parser.add_argument("--max-turns", type=int, default=4, help="turns mode: human+AI pairs at most.")
        parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight at once.")
        parser.add_argument("--budget-usd", help="Stop sending requests once this much is spent.")
        parser.add_argument("--budget-tokens", type=int, help="Stop sending requests once this many tokens are used.")
        parser.add_argument("--sample", type=int, help="Only a random sample of this many seeds.")
        parser.add_argument("--sample-seed", type=int, default=0, help="Random seed of the sample (same seed, same sample).")
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--max-tokens", type=int)
        parser.add_argument("--params", help='More sampling parameters as JSON, e.g. \'{"top_p": 0.9}\'.')
        parser.add_argument("--language", default="en", help="ISO 639-1 code the dialogues should be in (a filter).")
        parser.add_argument("--min-turns", type=int, default=2, help="Dialogues with fewer turns are flagged.")
        parser.add_argument("--name", default="", help="A name for the run.")
        parser.add_argument("--wait", action="store_true", help="Show progress until the run ends; exit 0 if it succeeded.")
        parser.add_argument("--poll", type=float, default=1.0, help=argparse_hidden())

    def handle(self, *args, **opts):
        seed_set = SeedSet.objects.filter(name=opts["seed_set"]).first()
        if seed_set is None:
            raise CommandError(f"--set: no seed set named {opts['seed_set']!r} (import one with import_seeds)")
        endpoint = self._endpoint(opts)
        template = self._template(opts)
        params = self._params(opts)
        try:
            run = generation_run_start(
                seed_set=seed_set, endpoint=endpoint, model=opts["model"], template=template, mode=opts["mode"],
                params=params, max_turns=opts["max_turns"], concurrency=opts["concurrency"],
                budget_usd=opts["budget_usd"], budget_tokens=opts["budget_tokens"], sample_size=opts["sample"],
                sample_seed=opts["sample_seed"], language=opts["language"], min_turns=opts["min_turns"],
                name=opts["name"],
            )
        except RunSpecError as exc:
            raise CommandError(f"--{exc.field.replace('_', '-')}: {str(exc).split(': ', 1)[1]}") from None
        self.stdout.write(str(run.pk))
        sys.stdout.flush()
        err = self.stderr
        err.write(f"Run {run.pk}: {run.items_total} seeds of {seed_set.name!r}, {run.mode} mode, {run.model} at "
                  f"{endpoint.name} ({endpoint.base_url}), concurrency {run.concurrency}.")
        if not ModelPrice.objects.filter(model=run.model).exists():
            err.write(f"Warning: no price for model {run.model!r}: its cost counts as 0 (add one in admin → Model prices).")
        embedded = app.conf.task_always_eager
        if embedded:
            err.write("Embedded mode (no worker): the run executes in this process, which waits for it.")
        if not opts["wait"]:
            if embedded:
                wait_for_local_drivers()
            return
        status = self._follow(run, opts["poll"])
        if embedded:
            wait_for_local_drivers()
        progress = generation_run_progress(run)
        err.write(f"Run {run.pk} {status}: {progress['done']} done, {progress['failed']} failed, "
                  f"{progress['pending']} pending, {progress['tokens']} tokens, ${float(progress['cost_usd']):.4f}"
                  + (" (budget reached)" if progress["budget_exhausted"] else "")
                  + (f"; {progress['error']}" if progress["error"] else ""))
        code = EXIT.get(status, 1)
        if code:
            sys.exit(code)

    def _endpoint(self, opts):
        if opts["endpoint"]:
            endpoint = Endpoint.objects.filter(name=opts["endpoint"]).first()
            if endpoint is None:
                raise CommandError(f"--endpoint: no endpoint named {opts['endpoint']!r}")
            if opts["base_url"] and endpoint.base_url.rstrip("/") != opts["base_url"].rstrip("/"):
                raise CommandError(f"--base-url: endpoint {endpoint.name!r} has base URL {endpoint.base_url}, "
                                   f"not {opts['base_url']}")
            return endpoint
        try:
            return endpoint_for_base_url(opts["base_url"] or settings.OPENAI_BASE_URL, api_key_env=opts["api_key_env"])
        except RunSpecError as exc:
            raise CommandError(f"--base-url: {str(exc).split(': ', 1)[1]}") from None

    def _template(self, opts):
        if not opts["template"]:
            return latest_template(opts["mode"])
        template = SelfChatTemplate.objects.filter(name=opts["template"]).order_by("-version").first()
        if template is None:
            raise CommandError(f"--template: no template named {opts['template']!r}")
        return template

    def _params(self, opts):
        params = {}
        if opts["params"]:
            try:
                params = json.loads(opts["params"])
            except json.JSONDecodeError as exc:
                raise CommandError(f"--params: not JSON ({exc})") from None
            if not isinstance(params, dict):
                raise CommandError("--params: must be a JSON object")
        if opts["temperature"] is not None:
            params["temperature"] = opts["temperature"]
        if opts["max_tokens"] is not None:
            params["max_tokens"] = opts["max_tokens"]
        return params

    def _follow(self, run, poll):
        """A progress bar over the run row until the run finishes (a paused run is waited for)."""
        bar = tqdm(total=run.items_total, unit="seed", file=sys.stderr, dynamic_ncols=True)
        try:
            while True:
                progress = generation_run_progress(run)
                settled = progress["done"] + progress["failed"]
                bar.update(settled - bar.n)
                bar.set_postfix_str(
                    f"{progress['status']} failed={progress['failed']} in_flight={progress['in_flight']} "
                    f"tokens={progress['tokens']} ${float(progress['cost_usd']):.4f}"
                    + (f" eta={progress['eta_seconds']:.0f}s" if progress["eta_seconds"] else ""), refresh=False)
                bar.refresh()
                if progress["is_finished"]:
                    return progress["status"]
                time.sleep(poll)
        except KeyboardInterrupt:
            bar.close()
            self.stderr.write(f"\nStopped following; run {run.pk} goes on (pause it on /runs/{run.pk}/).")
            sys.exit(130)
        finally:
            bar.close()


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS
