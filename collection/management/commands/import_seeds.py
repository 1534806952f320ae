"""`python manage.py import_seeds PATH --set NAME [--column COL] [--format FMT] [--skip-bad] [--source S] [--tags a,b]`

What a user gets: the file (CSV, TSV, JSONL, plain text, Parquet, or a Hugging Face dataset folder written by
save_to_disk) imported into the seed set NAME right here, in this process; the counts (imported, duplicates, bad)
and the bad-row report printed; a non-zero exit with an error naming the file and line/row when it fails, and in
that case nothing imported.
"""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from collection.models import JobStatus
from collection.readers import FORMATS
from collection.seeding import SeedImportError, seed_import_execute, seed_import_start

REPORT_LINES = 50


class Command(BaseCommand):
    help = "Import seeds from a file into a seed set (created if new). Nothing is imported if the file has a bad row, unless --skip-bad."

    def add_arguments(self, parser):
        parser.add_argument("path", help="CSV, TSV, JSONL, text or Parquet file, or a save_to_disk folder.")
        parser.add_argument("--set", dest="seed_set", required=True, help="Seed set name (created if new).")
        parser.add_argument("--column", help="Column or field holding the seed text (default: the only one, or 'text').")
        parser.add_argument("--format", dest="fmt", choices=FORMATS, help="Default: from the extension or folder layout.")
        parser.add_argument("--skip-bad", action="store_true", help="Import the good rows and report the bad ones.")
        parser.add_argument("--source", default="", help="Where the seeds came from (for a new set), e.g. quora.")
        parser.add_argument("--tags", default="", help="Comma-separated tags added to the set.")

    def handle(self, *args, path, seed_set, column, fmt, skip_bad, source, tags, **options):
        local = Path(path).expanduser().resolve()
        if not local.exists():
            raise CommandError(f"{path}: no such file or folder")
        try:
            job = seed_import_start(
                path=str(local), seed_set_name=seed_set, column=column, fmt=fmt, skip_bad=skip_bad,
                filename=local.name, source=source, tags=[t for t in tags.split(",") if t.strip()], enqueue=False,
            )
        except SeedImportError as exc:
            raise CommandError(str(exc)) from None
        job = seed_import_execute(job.pk)

        if job.report:
            self.stdout.write(f"Bad rows ({job.bad}):")
            for entry in job.report[:REPORT_LINES]:
                self.stdout.write(f"  {entry['where']}: {entry['error']}")
            if job.bad > REPORT_LINES:
                self.stdout.write(f"  … and {job.bad - REPORT_LINES} more (see import {job.pk})")
        if job.status != JobStatus.SUCCEEDED:
            raise CommandError(f"{job.error}\nNothing was imported (import {job.pk}).")
        self.stdout.write(self.style.SUCCESS(
            f"Seed set {job.seed_set.name!r} (id {job.seed_set_id}): {job.imported} imported, "
            f"{job.duplicates} duplicates skipped, {job.bad} bad, {job.rows_read} rows read (import {job.pk})."
        ))
