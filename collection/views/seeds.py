"""Seed pages (reviewer role): the seed sets with their counts and an upload form, one seed set's seeds, imports
and runs, and an import's live status with its bad-row report.

/seeds/              seed sets + upload form (the upload is kept in artifact storage under imports/)
/seeds/<id>/         seeds (paginated), import history, runs using the set, "start a run" link
/imports/<id>/       status, counts and report of one import; refreshes itself while it runs
"""
import posixpath
import uuid

from django import forms
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils.text import get_valid_filename

from baize_eval.roles import REVIEWER, role_required
from collection.models import Dialogue, GenerationRun, Import, Seed, SeedSet
from collection.seeding import SeedImportError, seed_import_start

SEEDS_PER_PAGE = 50
# An upload is one file: a Hugging Face dataset folder is imported with `manage.py import_seeds`.
UPLOAD_FORMATS = [("", "from the file name"), ("csv", "CSV"), ("tsv", "TSV"), ("jsonl", "JSONL"),
                  ("txt", "plain text, one seed a line"), ("parquet", "Parquet")]


class SeedUploadForm(forms.Form):
    file = forms.FileField(help_text="CSV, TSV, JSONL, text or Parquet (optionally .gz for the text formats).")
    seed_set = forms.CharField(label="Seed set", max_length=200, help_text="A new name creates the set; an existing "
                               "one adds to it (duplicates are skipped).")
    column = forms.CharField(required=False, max_length=200, help_text="Column or field with the seed text; default: "
                             "the only one, or 'text'.")
    format = forms.ChoiceField(choices=UPLOAD_FORMATS, required=False)
    skip_bad = forms.BooleanField(required=False, label="Skip bad rows (import the good ones and list the bad)")
    source = forms.CharField(required=False, max_length=200, help_text="Where the seeds came from, e.g. quora.")
    tags = forms.CharField(required=False, max_length=500, help_text="Comma-separated.")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        limit = settings.MAX_UPLOAD_MB * 1024 * 1024
        if upload.size > limit:
            raise forms.ValidationError(
                f"{upload.name} is {upload.size / 1024 / 1024:.1f} MB; uploads are limited to {settings.MAX_UPLOAD_MB} MB "
                "(MAX_UPLOAD_MB). Import larger files with manage.py import_seeds.", code="too_large",
            )
        return upload

    def clean_tags(self):
        return [t.strip() for t in self.cleaned_data["tags"].split(",") if t.strip()]


def _count(model, **filters):
    return Coalesce(Subquery(
        model.objects.filter(seed_set=OuterRef("pk"), **filters).order_by().values("seed_set")
        .annotate(n=Count("pk")).values("n"), output_field=IntegerField()), 0)


@role_required(REVIEWER)
def seed_set_list(request):
    status, refusal = 200, ""
    if request.method == "POST":
        form, job, status, refusal = _handle_upload(request)
        if job is not None:
            return redirect(f"/imports/{job.pk}/")
    else:
        form = SeedUploadForm()
    seed_sets = SeedSet.objects.annotate(
        seed_count=_count(Seed), run_count=_count(GenerationRun), dialogue_count=_count(Dialogue),
    ).order_by("name")
    imports = Import.objects.filter(kind=Import.Kind.SEEDS).select_related("seed_set", "created_by")[:10]
    return render(request, "collection/seed_list.html", {
        "form": form, "refusal": refusal, "seed_sets": seed_sets, "imports": imports,
        "max_upload_mb": settings.MAX_UPLOAD_MB,
    }, status=status)


def _handle_upload(request):
    """(form, the started Import or None, HTTP status, why the upload was refused before reading it)."""
    limit = settings.MAX_UPLOAD_MB * 1024 * 1024
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit + 64 * 1024:  # refuse before receiving the body (64 KB for the other fields)
        return SeedUploadForm(), None, 413, (
            f"The upload is {declared / 1024 / 1024:.1f} MB; uploads are limited to {settings.MAX_UPLOAD_MB} MB "
            "(MAX_UPLOAD_MB). Import larger files with manage.py import_seeds."
        )
    form = SeedUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return form, None, 413 if form.has_error("file", "too_large") else 400, ""
    data = form.cleaned_data
    upload = data["file"]
    filename = get_valid_filename(posixpath.basename(upload.name)) or "upload"
    # A folder per upload keeps the original name (it is what errors and source refs show).
    stored = default_storage.save(f"imports/{uuid.uuid4().hex}/{filename}", upload)
    try:
        job = seed_import_start(
            path=stored, seed_set_name=data["seed_set"], column=data["column"] or None, fmt=data["format"] or None,
            skip_bad=data["skip_bad"], filename=filename, source=data["source"], tags=data["tags"],
            created_by=request.user,
        )
    except SeedImportError as exc:
        default_storage.delete(stored)
        form.add_error(None, str(exc))
        return form, None, 400, ""
    return form, job, 302, ""


@role_required(REVIEWER)
def seed_set_detail(request, seed_set_id):
    seed_set = get_object_or_404(SeedSet, pk=seed_set_id)
    page = Paginator(Seed.objects.filter(seed_set=seed_set).order_by("id"), SEEDS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    imports = (Import.objects.filter(Q(seed_set=seed_set) | Q(seed_set_name=seed_set.name, seed_set__isnull=True))
               .select_related("created_by").order_by("-id")[:50])
    runs = GenerationRun.objects.filter(seed_set=seed_set).order_by("-id")[:50]
    return render(request, "collection/seed_detail.html", {
        "seed_set": seed_set, "page": page, "imports": imports, "runs": runs,
        "dialogue_count": Dialogue.objects.filter(seed_set=seed_set).count(),
    })


@role_required(REVIEWER)
def import_detail(request, import_id):
    job = get_object_or_404(Import.objects.select_related("seed_set", "created_by"), pk=import_id)
    return render(request, "collection/seed_import.html", {"job": job, "running": not job.is_finished})


urlpatterns = [
    path("seeds/", seed_set_list, name="seed-list"),
    path("seeds/<int:seed_set_id>/", seed_set_detail, name="seed-detail"),
    path("imports/<int:import_id>/", import_detail, name="import-detail"),
]
