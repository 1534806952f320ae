"""Which dialogues a filter picks: one definition shared by the review queue, bulk actions, the API and exports.

A spec is a plain dict (it is stored on Export rows and passed in query strings):
  seed_set (id), run (id), status ("undecided"|"approved"|"rejected"|"disputed"|"all"),
  flag ("any" | "none" | a rule name), min_turns, max_turns, min_length, max_length (characters), q (text search).
"""
from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchVectorExact, SearchVectorField
from django.db.models import Exists, Expression, OuterRef

from collection.models import Dialogue, DialogueFlag

SPEC_KEYS = ("seed_set", "run", "status", "flag", "min_turns", "max_turns", "min_length", "max_length", "q")
INT_KEYS = ("seed_set", "run", "min_turns", "max_turns", "min_length", "max_length")
STATUSES = [value for value, _ in Dialogue.Status.choices]
SEARCH_CONFIG = "english"


class StoredSearchVector(Expression):
    """The dialogue's stored tsvector column: to_tsvector('english', search_document), kept current by a trigger
    and GIN-indexed (Postgres only; migration collection 0002). It is not a model field, so only searches read it."""

    output_field = SearchVectorField()

    def as_sql(self, compiler, connection):
        # The query's own alias for the dialogue table (U0 and the like inside subqueries).
        alias = compiler.query.get_initial_alias()
        return f"{compiler.quote_name_unless_alias(alias)}.search_vector", []


# Full-text search goes through this expression so Postgres uses the GIN index and never re-parses documents.
SEARCH_VECTOR = StoredSearchVector()


class SelectionError(ValueError):
    """Names the filter field that is wrong."""


def clean_spec(raw):
    """Validate a filter spec (from a form, query string or stored export) into typed values; drop blanks."""
    spec = {}
    for key in SPEC_KEYS:
        value = raw.get(key)
        if value is None or value == "":
            continue
        if key in INT_KEYS:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise SelectionError(f"{key}: {value!r} is not a whole number") from None
            if value < 0:
                raise SelectionError(f"{key}: must not be negative")
        elif key == "status":
            if value != "all" and value not in STATUSES:
                raise SelectionError(f"status: {value!r} is not one of all, {', '.join(STATUSES)}")
        else:
            value = str(value).strip()
            if len(value) > 500:
                raise SelectionError(f"{key}: longer than 500 characters")
            if "\x00" in value:
                # Postgres text cannot hold NUL; refused here rather than failing inside the query.
                raise SelectionError(f"{key}: must not contain NUL characters")
            if not value:
                continue
        spec[key] = value
    return spec


def select_dialogues(spec, queryset=None):
    """Dialogues matching a cleaned spec (see clean_spec)."""
    qs = Dialogue.objects.all() if queryset is None else queryset
    if "seed_set" in spec:
        qs = qs.filter(seed_set_id=spec["seed_set"])
    if "run" in spec:
        qs = qs.filter(run_id=spec["run"])
    status = spec.get("status", "all")
    if status != "all":
        qs = qs.filter(status=status)
    flag = spec.get("flag")
    if flag == "any":
        qs = qs.filter(is_flagged=True)
    elif flag == "none":
        qs = qs.filter(is_flagged=False)
    elif flag:
        qs = qs.filter(Exists(DialogueFlag.objects.filter(dialogue=OuterRef("pk"), rule=flag)))
    if "min_turns" in spec:
        qs = qs.filter(num_turns__gte=spec["min_turns"])
    if "max_turns" in spec:
        qs = qs.filter(num_turns__lte=spec["max_turns"])
    if "min_length" in spec:
        qs = qs.filter(length_chars__gte=spec["min_length"])
    if "max_length" in spec:
        qs = qs.filter(length_chars__lte=spec["max_length"])
    if spec.get("q"):
        qs = text_search(qs, spec["q"])
    return qs


def text_search(qs, query):
    """Postgres full-text search; on the embedded SQLite demo, a plain substring match."""
    if settings.IS_POSTGRES:
        return qs.filter(
            SearchVectorExact(SEARCH_VECTOR, SearchQuery(query, config=SEARCH_CONFIG, search_type="websearch"))
        )
    return qs.filter(search_document__icontains=query)
