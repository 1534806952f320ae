"""Query-string filters for the API lists.

Dialogues are filtered exactly as the review queue and exports filter them (collection.selection), so a query
string copied from the queue page selects the same rows here.
"""
import django_filters
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend

from baize_eval.llm.models import ModelPrice
from collection import selection
from collection.models import Export, GenerationRun, Import, ReviewEvent, Seed, SeedSet

# (name, type, description) of each selection key, for the OpenAPI schema.
SELECTION_PARAMETERS = (
    ("seed_set", "integer", "Seed set id."),
    ("run", "integer", "Generation run id."),
    ("status", "string", "undecided, approved, rejected, disputed, or all (default)."),
    ("flag", "string", "any (flagged), none (not flagged), or an automatic-filter rule name."),
    ("min_turns", "integer", "At least this many turns."),
    ("max_turns", "integer", "At most this many turns."),
    ("min_length", "integer", "At least this many characters of turn text."),
    ("max_length", "integer", "At most this many characters of turn text."),
    ("q", "string", "Text search over topic and turns (Postgres full-text, websearch syntax)."),
)


def selection_error(error):
    """A SelectionError ("key: message") as a DRF validation error keyed by the field it names."""
    key, _, message = str(error).partition(":")
    if key in selection.SPEC_KEYS and message:
        return ValidationError({key: [message.strip()]})
    return ValidationError({"filter": [str(error)]})


def clean_selection(raw):
    try:
        return selection.clean_spec(raw)
    except selection.SelectionError as error:
        raise selection_error(error) from None


class DialogueSelectionFilter(BaseFilterBackend):
    """The review queue's filters (collection.selection) as query parameters."""

    def filter_queryset(self, request, queryset, view):
        if getattr(view, "action", None) != "list":
            return queryset
        spec = clean_selection(request.query_params)
        return selection.select_dialogues(spec, queryset)

    def get_schema_operation_parameters(self, view):
        parameters = []
        for name, kind, description in SELECTION_PARAMETERS:
            schema = {"type": kind}
            if kind == "integer":
                schema["minimum"] = 0
            if name == "status":
                schema["enum"] = ["all", *selection.STATUSES]
            if name in ("flag", "q"):
                schema["maxLength"] = 500
            parameters.append({"name": name, "required": False, "in": "query", "description": description,
                               "schema": schema})
        return parameters


class SeedSetFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains", help_text="Name contains (case-insensitive).")
    source = django_filters.CharFilter(help_text="Exact source, e.g. quora.")
    tag = django_filters.CharFilter(method="filter_tag", help_text="Has this tag.")

    class Meta:
        model = SeedSet
        fields = ["name", "source", "tag"]

    def filter_tag(self, queryset, name, value):
        return queryset.filter(tags__contains=[value])


class SeedFilter(django_filters.FilterSet):
    seed_set = django_filters.NumberFilter(field_name="seed_set_id", help_text="Seed set id.")
    q = django_filters.CharFilter(field_name="text", lookup_expr="icontains", help_text="Text contains.")

    class Meta:
        model = Seed
        fields = ["seed_set", "q"]


class ImportFilter(django_filters.FilterSet):
    seed_set = django_filters.NumberFilter(field_name="seed_set_id", help_text="Seed set id.")

    class Meta:
        model = Import
        fields = ["seed_set", "status", "kind"]


class GenerationRunFilter(django_filters.FilterSet):
    seed_set = django_filters.NumberFilter(field_name="seed_set_id", help_text="Seed set id.")

    class Meta:
        model = GenerationRun
        fields = ["seed_set", "status", "mode", "model"]


class ReviewEventFilter(django_filters.FilterSet):
    dialogue = django_filters.NumberFilter(field_name="dialogue_id", help_text="Dialogue id.")
    actor = django_filters.CharFilter(field_name="actor__username", help_text="Username of who acted.")

    class Meta:
        model = ReviewEvent
        fields = ["dialogue", "actor", "action"]


class ExportFilter(django_filters.FilterSet):
    # Not "format": DRF reads ?format= to pick a renderer.
    fmt = django_filters.ChoiceFilter(field_name="format", choices=Export.Format.choices, help_text="Export format.")
    created_by = django_filters.CharFilter(field_name="created_by__username", help_text="Username of who exported.")

    class Meta:
        model = Export
        fields = ["status", "fmt", "created_by"]


class ModelPriceFilter(django_filters.FilterSet):
    model = django_filters.CharFilter(lookup_expr="icontains", help_text="Model name contains.")

    class Meta:
        model = ModelPrice
        fields = ["model"]
