"""Generation run pages (reviewer role): the list of runs, a form to start one, and a run's page with live progress
(done, failed, in flight, tokens, cost, ETA, filter counts; polled every 2 s from /runs/<id>/progress.json), the
pause / resume / cancel / retry-failed buttons, a budget change, and the failed seeds with their errors.

An endpoint's API key is never shown: only whether its environment variable is set.
"""
import json

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from baize_eval.celery import app
from baize_eval.llm.client import CHARS_PER_TOKEN
from baize_eval.llm.models import Endpoint
from baize_eval.roles import REVIEWER, role_required
from collection import filters, services
from collection.models import GenerationRun, SeedSet, SelfChatTemplate
from collection.templates_default import ensure_default_templates

reviewer_required = role_required(REVIEWER)
PAGE_SIZE = 50
FAILED_SHOWN = 200
MAIN_FIELDS = ("seed_set", "endpoint", "model", "template", "mode", "name")


def _endpoint_label(endpoint):
    key = "key set" if endpoint.has_key else ("no key needed" if not endpoint.api_key_env else "key NOT set")
    return f"{endpoint.name} ({endpoint.base_url}; {key})"


class RunForm(forms.Form):
    seed_set = forms.ModelChoiceField(queryset=SeedSet.objects.order_by("name"))
    endpoint = forms.ModelChoiceField(queryset=Endpoint.objects.order_by("name"))
    model = forms.CharField(max_length=200, help_text="The model name the endpoint serves, e.g. gpt-4o-mini.")
    template = forms.ModelChoiceField(queryset=SelfChatTemplate.objects.order_by("name", "-version"),
                                      help_text="Editable, versioned prompts (admin → Self-chat templates).")
    mode = forms.ChoiceField(choices=[("", "the template's mode")] + SelfChatTemplate.Mode.choices, required=False,
                             help_text="transcript: one completion per seed; turns: a simulated human and an answer "
                                       "per turn.")
    name = forms.CharField(max_length=200, required=False)
    temperature = forms.FloatField(required=False, min_value=0, max_value=2, initial=0.7)
    max_tokens = forms.IntegerField(required=False, min_value=1, max_value=1_000_000, initial=1024)
    params = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                             label="More sampling parameters (JSON)", help_text='e.g. {"top_p": 0.9}')
    max_turns = forms.IntegerField(min_value=1, max_value=50, initial=4, help_text="turns mode: human+AI pairs at most.")
    concurrency = forms.IntegerField(min_value=1, max_value=512, initial=8, help_text="Requests in flight at once.")
    budget_usd = forms.DecimalField(required=False, min_value=0, max_digits=12, decimal_places=4,
                                    label="Budget (USD)")
    budget_tokens = forms.IntegerField(required=False, min_value=0, label="Budget (tokens)")
    sample_size = forms.IntegerField(required=False, min_value=1, label="Sample size",
                                     help_text="Only this many seeds, picked at random (empty: all).")
    sample_seed = forms.IntegerField(initial=0, min_value=0, max_value=2**62, label="Sample seed")
    language = forms.CharField(max_length=10, initial="en", help_text="ISO 639-1 code the dialogues should be in.")
    min_turns = forms.IntegerField(min_value=0, max_value=100, initial=2, help_text="Fewer turns are flagged.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["endpoint"].label_from_instance = _endpoint_label

    def clean_params(self):
        raw = self.cleaned_data["params"].strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Must be a JSON object, e.g. {\"top_p\": 0.9}.")
        return value

    def sampling(self):
        params = dict(self.cleaned_data["params"])
        for name in ("temperature", "max_tokens"):
            if self.cleaned_data.get(name) is not None:
                params[name] = self.cleaned_data[name]
        return params


class BudgetForm(forms.Form):
    budget_usd = forms.DecimalField(required=False, min_value=0, max_digits=12, decimal_places=4)
    budget_tokens = forms.IntegerField(required=False, min_value=0)


@reviewer_required
@require_GET
def run_list(request):
    if app.conf.task_always_eager:
        # Embedded mode has no periodic sweep: a run left running by a stopped server is resumed from here.
        services.stale_runs_recover()
    runs = GenerationRun.objects.select_related("seed_set", "endpoint", "template").order_by("-id")
    page = Paginator(runs, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "collection/run_list.html", {"page": page, "runs": page.object_list})


@reviewer_required
@require_http_methods(["GET", "POST"])
def run_new(request):
    ensure_default_templates()
    if request.method == "POST":
        form = RunForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                run = services.generation_run_start(
                    seed_set=data["seed_set"], endpoint=data["endpoint"], model=data["model"],
                    template=data["template"], mode=data["mode"] or None, params=form.sampling(),
                    max_turns=data["max_turns"], concurrency=data["concurrency"], budget_usd=data["budget_usd"],
                    budget_tokens=data["budget_tokens"], sample_size=data["sample_size"],
                    sample_seed=data["sample_seed"], language=data["language"], min_turns=data["min_turns"],
                    name=data["name"], created_by=request.user,
                )
            except services.RunSpecError as error:
                field = error.field if error.field in form.fields else None
                form.add_error(field, str(error).split(": ", 1)[-1] if field else str(error))
            else:
                messages.success(request, f"Run {run.pk} queued: {run.items_total} seeds.")
                return redirect(f"/runs/{run.pk}/")
    else:
        initial = {}
        if request.GET.get("seed_set", "").isdigit():
            initial["seed_set"] = int(request.GET["seed_set"])
        template = SelfChatTemplate.objects.filter(mode="transcript").order_by("-created_at", "-version").first()
        if template:
            initial["template"] = template.pk
        endpoint = Endpoint.objects.order_by("name").first()
        if endpoint:
            initial["endpoint"] = endpoint.pk
        form = RunForm(initial=initial)
    return render(request, "collection/run_new.html", {
        "form": form, "has_seed_sets": SeedSet.objects.exists(), "has_endpoints": Endpoint.objects.exists(),
        "main_fields": [form[name] for name in MAIN_FIELDS],
        "pace_fields": [form[name] for name in form.fields if name not in MAIN_FIELDS],
    })


@reviewer_required
@require_GET
def run_detail(request, run_id):
    run = get_object_or_404(GenerationRun.objects.select_related("seed_set", "endpoint", "template", "created_by"),
                            pk=run_id)
    progress = services.generation_run_progress(run)
    return render(request, "collection/run_detail.html", {
        "run": run, "progress": progress, "endpoint": run.endpoint,
        "filter_rows": [(rule, progress["filters"].get(rule, 0), filters.RULES[rule]) for rule in filters.RULES],
        "failed_items": services.generation_run_failed_items(run, limit=FAILED_SHOWN),
        "params": json.dumps(run.params, indent=1, sort_keys=True) if run.params else "",
        "recent": run.dialogues.order_by("-id").only("id", "topic", "num_turns", "is_flagged", "parse_error")[:10],
        "budget_form": BudgetForm(initial={"budget_usd": run.budget_usd, "budget_tokens": run.budget_tokens}),
        "chars_per_token": CHARS_PER_TOKEN,
    })


@reviewer_required
@require_GET
def run_progress(request, run_id):
    """What the run page polls: the same numbers as the API and the CLI progress bar."""
    run = get_object_or_404(GenerationRun, pk=run_id)
    return JsonResponse(services.generation_run_progress(run))


def _action(service, done_message, refused_message):
    @reviewer_required
    @require_POST
    def view(request, run_id):
        run = get_object_or_404(GenerationRun, pk=run_id)
        result = service(run=run)
        if result:
            messages.success(request, done_message.format(run=run, result=result))
        else:
            run.refresh_from_db()
            messages.error(request, refused_message.format(run=run))
        return redirect(f"/runs/{run.pk}/")

    view.__name__ = f"run_{service.__name__.rsplit('_', 1)[-1]}"
    return view


run_pause = _action(services.generation_run_pause, "Run {run.pk} paused: requests in flight finish, nothing new starts.",
                    "Run {run.pk} is {run.status}; only a queued or running run can be paused.")
run_resume = _action(services.generation_run_resume, "Run {run.pk} resumed.",
                     "Run {run.pk} is {run.status}; only a paused run can be resumed.")
run_cancel = _action(services.generation_run_cancel, "Run {run.pk} cancelled; its dialogues so far are kept.",
                     "Run {run.pk} is already {run.status}.")
run_retry_failed = _action(services.generation_run_retry_failed, "{result} failed seed(s) of run {run.pk} queued again.",
                           "Run {run.pk} ({run.status}) has no failed seeds to retry.")


@reviewer_required
@require_POST
def run_budget(request, run_id):
    run = get_object_or_404(GenerationRun, pk=run_id)
    form = BudgetForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(e)}" for field, e in form.errors.items())
        messages.error(request, f"Budget not changed: {errors}")
        return redirect(f"/runs/{run.pk}/")
    requeued = services.generation_run_set_budget(run=run, budget_usd=form.cleaned_data["budget_usd"],
                                                  budget_tokens=form.cleaned_data["budget_tokens"])
    messages.success(request, f"Budget of run {run.pk} changed" + ("; its remaining seeds are queued again." if requeued else "."))
    return redirect(f"/runs/{run.pk}/")


urlpatterns = [
    path("runs/", run_list, name="run-list"),
    path("runs/new/", run_new, name="run-new"),
    path("runs/<int:run_id>/", run_detail, name="run-detail"),
    path("runs/<int:run_id>/progress.json", run_progress, name="run-progress"),
    path("runs/<int:run_id>/pause/", run_pause, name="run-pause"),
    path("runs/<int:run_id>/resume/", run_resume, name="run-resume"),
    path("runs/<int:run_id>/cancel/", run_cancel, name="run-cancel"),
    path("runs/<int:run_id>/retry-failed/", run_retry_failed, name="run-retry-failed"),
    path("runs/<int:run_id>/budget/", run_budget, name="run-budget"),
]
