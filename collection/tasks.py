"""Celery entry points. Payloads are ids; the job row is the truth and each task claims it before working.

Queues: `generation` (LLM calls, I/O bound), `default` (imports, exports, sweeps), `gpu` (later: training).
Each task's queue is set by its name in CELERY_TASK_ROUTES (settings): Celery 6 drops a task's own `queue`.
"""
from celery import shared_task
from celery.signals import worker_ready, worker_shutting_down


@shared_task(name="collection.import_seeds")
def import_seeds(import_id):
    """Run one queued seed import (collection.seeding); the Import row holds status, counts and the report."""
    from collection.seeding import seed_import_execute

    seed_import_execute(import_id)


@shared_task(name="collection.export_corpus")
def export_corpus(export_id):
    """Write one queued corpus export (collection.exporting); the Export row holds status, progress and counts."""
    from collection.exporting import export_execute

    export_execute(export_id)


@shared_task(name="collection.import_corpus")
def import_corpus(import_id):
    """Run one queued corpus import (collection.corpus_import); the Import row holds status, counts and errors."""
    from collection.corpus_import import corpus_import_execute

    corpus_import_execute(import_id)


@shared_task(name="collection.flag_near_duplicates")
def flag_near_duplicates(seed_set_id):
    """Re-run the near-duplicate pass (collection.filters) over one seed set's dialogues: the corpus it belongs to."""
    from collection.filters import flag_near_duplicates as flag
    from collection.models import Dialogue

    return flag(Dialogue.objects.filter(seed_set_id=seed_set_id))


@shared_task(name="collection.review_bulk")
def review_bulk(actor_id, action, spec, reasons=()):
    """Approve or reject a large filtered selection (collection.review.review_bulk), chunk by chunk; the
    dialogues' status and review events show the progress. The payload is the filter spec, not the rows."""
    from django.contrib.auth import get_user_model

    from collection.review import review_bulk as bulk

    actor = get_user_model().objects.get(pk=actor_id)
    return bulk(spec=spec, actor=actor, action=action, reasons=list(reasons))


@shared_task(name="collection.drive_generation_run")
def drive_generation_run(run_id):
    """Drive one queued generation run to its end (collection.selfchat); the run row holds status and counters."""
    from collection.selfchat import drive_generation_run as drive

    return drive(run_id=run_id)


@shared_task(name="collection.recover_stale_jobs")
def recover_stale_jobs(follow_up=False):
    """Re-queue runs whose driver went silent and free their leased seeds (periodic, see CELERY_BEAT_SCHEDULE).
    With follow_up (at worker start) it checks once more as soon as every run running now would have turned
    stale, so a restarted worker resumes the runs of the one it replaced without waiting for the periodic sweep."""
    from collection.seeding import seed_imports_recover_stale
    from collection.services import stale_runs_recover

    seed_imports_recover_stale()
    requeued, all_stale_in = stale_runs_recover()
    if follow_up and all_stale_in is not None:
        recover_stale_jobs.apply_async(countdown=all_stale_in)
    return requeued


@worker_ready.connect
def recover_on_worker_start(sender=None, **kwargs):
    from collection.selfchat import warm_up

    recover_stale_jobs.apply_async(kwargs={"follow_up": True})
    warm_up()


@shared_task(name="collection.fail_stale_exports")
def fail_stale_exports():
    """Mark exports and corpus imports whose worker died as failed (periodic, see CELERY_BEAT_SCHEDULE)."""
    from collection.exporting import stale_jobs_fail

    return stale_jobs_fail()


@worker_shutting_down.connect
def stop_drivers_on_shutdown(sender=None, **kwargs):
    from collection.selfchat import request_stop

    request_stop()
