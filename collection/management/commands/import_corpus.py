"""python manage.py import_corpus PATH --format baize|openai|sharegpt --set NAME [--language CODE]

Reads an existing corpus (the published Baize JSON layout, OpenAI chat JSONL or ShareGPT JSONL) into the seed set
NAME (created if new): a seed per topic (Baize) or first human message, and a dialogue per record with its source
recorded, undecided and ready for review. All or nothing: a bad record stops the import with an error naming the
file, the record (or line) and the field, and nothing is imported. Runs in this process.
"""
import os

from django.core.management.base import BaseCommand, CommandError

from collection import formats
from collection.corpus_import import CorpusImportError, corpus_import


class Command(BaseCommand):
    help = "Import dialogues from Baize JSON, OpenAI chat JSONL or ShareGPT JSONL into a seed set."

    def add_arguments(self, parser):
        parser.add_argument("path", help="The corpus file.")
        parser.add_argument("--format", required=True, choices=formats.TEXT_FORMATS)
        parser.add_argument("--set", dest="seed_set", required=True, help="Seed set name (created if new).")
        parser.add_argument("--language", default="",
                            help="ISO 639-1 code of the corpus, for the wrong-language filter (default: not judged).")

    def handle(self, *args, **options):
        try:
            job = corpus_import(path=_absolute(options["path"]), fmt=options["format"],
                                seed_set_name=options["seed_set"], language=options["language"])
        except CorpusImportError as error:
            raise CommandError(str(error)) from None
        if job.status != "succeeded":
            raise CommandError(f"import {job.pk} failed, nothing was imported: {job.error}")
        self.stdout.write(
            f"import {job.pk}: {job.imported} dialogues from {job.rows_read} records into seed set "
            f"{job.seed_set.name!r} ({job.duplicates} repeated a topic already in the set)"
        )
        flagged = job.seed_set.dialogues.filter(source=f"import:{job.format}:{job.filename}", is_flagged=True).count()
        self.stdout.write(f"  dialogues from {job.filename} flagged by the automatic filters: {flagged}")


def _absolute(path):
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file")
    return os.path.abspath(path)
