"""Review queue support: the full-text index behind the queue's text search, and the default reject reasons.

The GIN index is built on exactly the expression collection.selection.SEARCH_VECTOR compiles to, so Postgres uses
it for `q=` searches. It exists only on Postgres; the embedded SQLite demo searches with a substring match and
migrates without it.
"""
from django.db import migrations

SEARCH_INDEX = "collection_dialogue_search_gin"
SEARCH_EXPRESSION = "to_tsvector('english'::regconfig, COALESCE(\"search_document\", ''))"

DEFAULT_REASONS = [
    ("off-topic", "Off-topic: drifts away from the seed"),
    ("factual-error", "Factual error"),
    ("unsafe", "Unsafe or harmful content"),
    ("low-quality", "Low quality: vague, repetitive or unhelpful"),
    ("malformed", "Malformed: broken turns, markers or formatting"),
    ("duplicate", "Duplicate of another dialogue"),
    ("other", "Other (say why in the note)"),
]


def create_search_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f'CREATE INDEX IF NOT EXISTS {SEARCH_INDEX} ON "collection_dialogue" USING GIN ({SEARCH_EXPRESSION})'
    )


def drop_search_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {SEARCH_INDEX}")


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
        migrations.RunPython(create_search_index, drop_search_index),
        migrations.RunPython(add_reasons, remove_reasons),
    ]
