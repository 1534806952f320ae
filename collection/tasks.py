"""Celery entry points. Payloads are ids; the job row is the truth and each task claims it before working.

Queues: `generation` (LLM calls, I/O bound), `default` (imports, exports, sweeps), `gpu` (later: training).
"""
from celery import shared_task


@shared_task(name="collection.import_seeds", queue="default")
def import_seeds(import_id):
    """Run one queued seed import (collection.seeding); the Import row holds status, counts and the report."""
    from collection.seeding import seed_import_execute

    seed_import_execute(import_id)


@shared_task(name="collection.export_corpus", queue="default")
def export_corpus(export_id):
    """Write one queued corpus export (collection.exporting); the Export row holds status, progress and counts."""
    from collection.exporting import export_execute

    export_execute(export_id)


@shared_task(name="collection.import_corpus", queue="default")
def import_corpus(import_id):
    """Run one queued corpus import (collection.corpus_import); the Import row holds status, counts and errors."""
    from collection.corpus_import import corpus_import_execute

    corpus_import_execute(import_id)


@shared_task(name="collection.flag_near_duplicates", queue="default")
def flag_near_duplicates(seed_set_id):
    """Re-run the near-duplicate pass (collection.filters) over one seed set's dialogues: the corpus it belongs to."""
    from collection.filters import flag_near_duplicates as flag
    from collection.models import Dialogue

    return flag(Dialogue.objects.filter(seed_set_id=seed_set_id))
