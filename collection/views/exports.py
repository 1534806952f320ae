"""Export pages (reviewer role): the list of exports, a form to start one (prefilled from the review queue's
query string, so the queue links "export this selection"), an export's page with live progress, counts, spec and
sha256, the download; and the upload form that imports an existing corpus (Baize JSON, OpenAI or ShareGPT JSONL).
"""
import os
import uuid

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.files.storage import default_storage
from django.db.models import Count
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_http_methods

from baize_eval.roles import REVIEWER, role_required
from collection import formats
from collection.artifacts import download_response
from collection.corpus_import import CorpusImportError, corpus_import_start
from collection.exporting import DEFAULT_OPTIONS, ExportError, export_spec_clean, export_start
from collection.filters import RULES
from collection.models import Export, GenerationRun, Import, SeedSet
from collection.selection import SPEC_KEYS, STATUSES, SelectionError, clean_spec, select_dialogues

reviewer_required = role_required(REVIEWER)
PAGE_SIZE = 50
COUNT_LABELS = [
    ("selected", "Matched the filters"),
    ("excluded_flagged", "Left out: flagged by a filter"),
    ("skipped_empty", "Left out: no turns"),
    ("collapsed_near_duplicates", "Left out: near-duplicate of a kept dialogue"),
    ("train", "Written to train"),
    ("validation", "Written to validation"),
    ("written", "Written in all"),
]


# --- forms ------------------------------------------------------------------------------------------------

def _seed_set_choices():
    return [("", "any")] + [(str(s.pk), s.name) for s in SeedSet.objects.only("id", "name").order_by("name")]


def _run_choices():
    runs = GenerationRun.objects.only("id", "name").order_by("-id")[:200]
    return [("", "any")] + [(str(r.pk), f"#{r.pk} {r.name}".strip()) for r in runs]


FILTER_FIELDS = ("seed_set", "run", "status", "flag", "min_turns", "max_turns", "min_length", "max_length", "q")


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=Export.Format.choices, initial=formats.OPENAI, widget=forms.RadioSelect)
    seed_set = forms.ChoiceField(required=False)
    run = forms.ChoiceField(required=False)
    status = forms.ChoiceField(choices=[("all", "all")] + [(s, s) for s in STATUSES], initial="approved")
    flag = forms.ChoiceField(required=False, choices=[("", "either"), ("any", "any flag"), ("none", "no flag")]
                             + [(rule, rule) for rule in RULES])
    min_turns = forms.IntegerField(required=False, min_value=0, label="Turns ≥")
    max_turns = forms.IntegerField(required=False, min_value=0, label="Turns ≤")
    min_length = forms.IntegerField(required=False, min_value=0, label="Length ≥ (chars)")
    max_length = forms.IntegerField(required=False, min_value=0, label="Length ≤ (chars)")
    q = forms.CharField(required=False, max_length=500, label="Text search")
    include_flagged = forms.BooleanField(required=False, label="Include dialogues an automatic filter flagged")
    dedupe = forms.BooleanField(required=False, initial=True, label="Collapse near-duplicates")
    val_fraction = forms.FloatField(min_value=0, max_value=0.9, initial=0, label="Validation share (by seed)")
    shuffle = forms.BooleanField(required=False, initial=True, label="Shuffle")
    shuffle_seed = forms.IntegerField(min_value=0, max_value=2**63 - 1, initial=0, label="Shuffle seed")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["seed_set"].choices = _seed_set_choices()
        self.fields["run"].choices = _run_choices()

    def spec(self):
        data = {key: value for key, value in self.cleaned_data.items() if key != "format"}
        return {key: value for key, value in data.items() if value is not None and value != ""}


def _initial_from_query(params):
    """The form's values from a query string (the review queue's "export this selection" link)."""
    initial = {}
    try:
        selection = clean_spec(params)
    except SelectionError:
        selection = {}
    from_queue = any(key in params for key in SPEC_KEYS)
    # The queue shows every status when its status filter is empty; export exactly what it showed.
    initial["status"] = selection.get("status", "all" if from_queue else "approved")
    for key, value in selection.items():
        if key != "status":
            initial[key] = str(value) if key in ("seed_set", "run") else value
    if params.get("format") in Export.Format.values:
        initial["format"] = params["format"]
    return initial


class CorpusImportForm(forms.Form):
    file = forms.FileField(help_text="Baize JSON (a list of {topic, input}), OpenAI chat JSONL or ShareGPT JSONL.")
    format = forms.ChoiceField(choices=[(f, Export.Format(f).label) for f in formats.TEXT_FORMATS])
    seed_set = forms.CharField(max_length=200, label="Seed set name", help_text="Created if new.")
    language = forms.CharField(max_length=10, required=False,
                               help_text="ISO 639-1 code (e.g. en) for the wrong-language filter; empty: not judged.")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > settings.MAX_UPLOAD_MB * 1024 * 1024:
            raise forms.ValidationError(f"The file is larger than the {settings.MAX_UPLOAD_MB} MB upload limit; "
                                        "import it with `manage.py import_corpus` instead.")
        return upload


# --- pages ------------------------------------------------------------------------------------------------

@reviewer_required
@require_GET
def export_list(request):
    exports = Export.objects.select_related("created_by").order_by("-id")[:PAGE_SIZE]
    return render(request, "collection/export_list.html", {"exports": exports})


@reviewer_required
@require_http_methods(["GET", "POST"])
def export_new(request):
    if request.method == "POST":
        form = ExportForm(request.POST)
        if form.is_valid():
            try:
                export = export_start(fmt=form.cleaned_data["format"], spec=form.spec(), created_by=request.user)
            except ExportError as error:
                form.add_error(None, str(error))
            else:
                messages.success(request, f"Export {export.pk} started.")
                return redirect(f"/exports/{export.pk}/")
    else:
        form = ExportForm(initial=_initial_from_query(request.GET))
    return render(request, "collection/export_new.html", {
        "form": form, "preview": _preview(form),
        "filter_fields": [form[name] for name in FILTER_FIELDS],
        "checkboxes": [form[name] for name in ("include_flagged", "dedupe", "shuffle")],
        "numbers": [form[name] for name in ("val_fraction", "shuffle_seed")],
    })


def _preview(form):
    """How many dialogues the form's filters match, by status, and how many of those are flagged."""
    source = form.data if form.is_bound else form.initial
    try:
        spec = export_spec_clean({key: source.get(key) for key in SPEC_KEYS})
    except (ExportError, SelectionError):
        return None
    selection = {key: value for key, value in spec.items() if key in SPEC_KEYS}
    status = selection.pop("status")
    counts = dict(select_dialogues(selection).order_by().values_list("status").annotate(n=Count("id")))
    matching = select_dialogues({**selection, "status": status})
    return {
        "by_status": [(s, counts.get(s, 0)) for s in STATUSES],
        "matching": sum(counts.values()) if status == "all" else counts.get(status, 0),
        "flagged": matching.filter(is_flagged=True).count(),
    }


@reviewer_required
@require_GET
def export_detail(request, export_id):
    export = get_object_or_404(Export.objects.select_related("created_by"), pk=export_id)
    counts = [(label, export.counts.get(key, 0)) for key, label in COUNT_LABELS if key in export.counts]
    options = [(key, export.spec.get(key)) for key in DEFAULT_OPTIONS]
    selection = [(key, export.spec[key]) for key in SPEC_KEYS if key in export.spec]
    return render(request, "collection/export_detail.html", {
        "export": export, "counts": counts, "options": options, "selection": selection,
        "filename": os.path.basename(export.path) if export.path else "",
    })


@reviewer_required
@require_GET
def export_progress(request, export_id):
    """What the detail page polls while the export runs."""
    export = get_object_or_404(Export, pk=export_id)
    return JsonResponse({"status": export.status, "progress": export.progress, "total": export.total,
                         "finished": export.is_finished})


@reviewer_required
@require_GET
def export_download(request, export_id):
    export = get_object_or_404(Export, pk=export_id)
    if export.status == "succeeded" and export.path:
        try:
            return download_response(export.path, filename=os.path.basename(export.path))
        except FileNotFoundError:
            raise Http404("The export's file is no longer in artifact storage.") from None
    raise Http404(f"Export {export.pk} is {export.status}; its file can be downloaded once it has succeeded.")


@reviewer_required
@require_http_methods(["GET", "POST"])
def corpus_import_page(request):
    if request.method == "POST":
        form = CorpusImportForm(request.POST, request.FILES)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            name = os.path.basename(upload.name) or "corpus"
            stored = default_storage.save(f"imports/corpus/{uuid.uuid4().hex}/{name}", upload)
            try:
                job = corpus_import_start(path=stored, fmt=form.cleaned_data["format"],
                                          seed_set_name=form.cleaned_data["seed_set"], filename=name,
                                          language=form.cleaned_data["language"], created_by=request.user)
            except CorpusImportError as error:
                default_storage.delete(stored)
                form.add_error(None, str(error))
            else:
                messages.success(request, f"Import {job.pk} of {name} started.")
                return redirect("/imports/corpus/")
    else:
        form = CorpusImportForm()
    jobs = Import.objects.filter(kind=Import.Kind.CORPUS).select_related("seed_set", "created_by").order_by("-id")
    jobs = list(jobs[:PAGE_SIZE])
    return render(request, "collection/corpus_import.html", {
        "form": form, "jobs": jobs, "running": any(not j.is_finished for j in jobs),
        "max_upload_mb": settings.MAX_UPLOAD_MB,
    })


urlpatterns = [
    path("exports/", export_list, name="export-list"),
    path("exports/new/", export_new, name="export-new"),
    path("exports/<int:export_id>/", export_detail, name="export-detail"),
    path("exports/<int:export_id>/progress", export_progress, name="export-progress"),
    path("exports/<int:export_id>/download", export_download, name="export-download"),
    path("imports/corpus/", corpus_import_page, name="corpus-import"),
]
