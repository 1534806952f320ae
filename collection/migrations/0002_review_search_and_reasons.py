"""Review queue support: a stored full-text vector with its GIN index, indexes that answer the queue's counts
without reading the wide dialogue rows, and the default reject reasons.

Postgres only (the embedded SQLite demo searches with a substring match and counts by scanning; it migrates
without these):
- `collection_dialogue.search_vector`, kept equal to to_tsvector('english', search_document) by a trigger on every
  insert and every update that writes search_document (ORM, bulk_create, COPY alike). collection.selection's
  SEARCH_VECTOR reads this column, so a search never re-parses documents: not to re-check index hits (phrases),
  not when the planner walks the id index with the match as a filter. The column is not a model field, so the
  ORM never loads it (exports and API lists stay lean).
- The GIN index on that column (`collection_dialogue_search_gin`).
- Covering indexes for the queue's GROUP BY status/is_flagged counts per seed set and per run, a covering index by
  id for counts joined through flags, (num_turns, id) and (length_chars, id) for the queue's sorts, and partial
  indexes for per-reviewer decision counts and undo look-ups.
"""
from django.db import migrations

SEARCH_INDEX = "collection_dialogue_search_gin"

POSTGRES_FORWARD = [
    "ALTER TABLE collection_dialogue ADD COLUMN IF NOT EXISTS search_vector tsvector",
    """CREATE OR REPLACE FUNCTION collection_dialogue_search_vector() RETURNS trigger AS $$
       BEGIN
         NEW.search_vector := to_tsvector('english'::regconfig, COALESCE(NEW.search_document, ''));
         RETURN NEW;
       END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS collection_dialogue_search_vector ON collection_dialogue",
    """CREATE TRIGGER collection_dialogue_search_vector
       BEFORE INSERT OR UPDATE OF search_document ON collection_dialogue
       FOR EACH ROW EXECUTE FUNCTION collection_dialogue_search_vector()""",
    "UPDATE collection_dialogue SET search_vector = to_tsvector('english'::regconfig, COALESCE(search_document, ''))",
    f"CREATE INDEX IF NOT EXISTS {SEARCH_INDEX} ON collection_dialogue USING GIN (search_vector)",
    "CREATE INDEX IF NOT EXISTS collection_dialogue_set_counts ON collection_dialogue "
    "(seed_set_id, status, is_flagged) INCLUDE (run_id)",
    "CREATE INDEX IF NOT EXISTS collection_dialogue_run_counts ON collection_dialogue (run_id, status, is_flagged)",
    "CREATE INDEX IF NOT EXISTS collection_dialogue_id_cover ON collection_dialogue (id) "
    "INCLUDE (status, is_flagged, seed_set_id, run_id)",
    "CREATE INDEX IF NOT EXISTS collection_reviewevent_decisions ON collection_reviewevent (actor_id, created_at) "
    "WHERE action IN ('approve', 'reject')",
    "CREATE INDEX IF NOT EXISTS collection_reviewevent_undos ON collection_reviewevent (undoes_id) "
    "WHERE action = 'undo'",
    # Sorting the queue by turns or length pages through these without sorting every dialogue with the same value.
    "CREATE INDEX IF NOT EXISTS collection_dialogue_turns_id ON collection_dialogue (num_turns, id)",
    "CREATE INDEX IF NOT EXISTS collection_dialogue_length_id ON collection_dialogue (length_chars, id)",
]
POSTGRES_BACKWARD = [
    "DROP INDEX IF EXISTS collection_dialogue_length_id",
    "DROP INDEX IF EXISTS collection_dialogue_turns_id",
    "DROP INDEX IF EXISTS collection_reviewevent_undos",
    "DROP INDEX IF EXISTS collection_reviewevent_decisions",
    "DROP INDEX IF EXISTS collection_dialogue_id_cover",
    "DROP INDEX IF EXISTS collection_dialogue_run_counts",
    "DROP INDEX IF EXISTS collection_dialogue_set_counts",
    f"DROP INDEX IF EXISTS {SEARCH_INDEX}",
    "DROP TRIGGER IF EXISTS collection_dialogue_search_vector ON collection_dialogue",
    "DROP FUNCTION IF EXISTS collection_dialogue_search_vector()",
    "ALTER TABLE collection_dialogue DROP COLUMN IF EXISTS search_vector",
]

DEFAULT_REASONS = [
    ("off-topic", "Off-topic: drifts away from the seed"),
    ("factual-error", "Factual error"),
    ("unsafe", "Unsafe or harmful content"),
    ("low-quality", "Low quality: vague, repetitive or unhelpful"),
    ("malformed", "Malformed: broken turns, markers or formatting"),
    ("duplicate", "Duplicate of another dialogue"),
    ("other", "Other (say why in the note)"),
]


def postgres_forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in POSTGRES_FORWARD:
            schema_editor.execute(statement)


def postgres_backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in POSTGRES_BACKWARD:
            schema_editor.execute(statement)


def add_reasons(apps, schema_editor):
    RejectReason = apps.get_model("collection", "RejectReason")
    for code, label in DEFAULT_REASONS:
        RejectReason.objects.get_or_create(code=code, defaults={"label": label})


def remove_reasons(apps, schema_editor):
    RejectReason = apps.get_model("collection", "RejectReason")
    RejectReason.objects.filter(code__in=[code for code, _ in DEFAULT_REASONS]).delete()


class Migration(migrations.Migration):
    dependencies = [("collection", "0001_initial")]

    operations = [
        migrations.RunPython(postgres_forward, postgres_backward),
        migrations.RunPython(add_reasons, remove_reasons),
    ]
