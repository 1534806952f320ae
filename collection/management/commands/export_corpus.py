"""python manage.py export_corpus OUT --format baize|openai|sharegpt|hf [options]

Writes the selected dialogues to OUT, records the export (spec, counts, sha256; the file is also kept in artifact
storage, downloadable from /exports/) and prints the counts and sha256. Runs in this process, with progress.

Output: OUT for one file. With --val-fraction > 0 the split goes into two files beside it, NAME.train.EXT and
NAME.validation.EXT (e.g. corpus.jsonl -> corpus.train.jsonl + corpus.validation.jsonl). For --format hf, OUT is
a folder: OUT/dataset/ (datasets.load_from_disk) and OUT/parquet/<split>.parquet.
"""
import threading
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from collection import formats
from collection.exporting import SPLITS, ExportError, export_execute, export_start, output_paths
from collection.models import Export, SeedSet


class Command(BaseCommand):
    help = "Export dialogues as Baize JSON, OpenAI chat JSONL, ShareGPT JSONL or a Hugging Face dataset."

    def add_arguments(self, parser):
        parser.add_argument("out", help="Output file (a folder for --format hf).")
        parser.add_argument("--format", required=True, choices=formats.FORMATS)
        parser.add_argument("--status", default="approved",
                            choices=["approved", "all", "undecided", "rejected", "disputed"])
        parser.add_argument("--set", dest="seed_set", help="Only this seed set (by name).")
        parser.add_argument("--run", type=int, help="Only this generation run (by id).")
        flagged = parser.add_mutually_exclusive_group()
        flagged.add_argument("--exclude-flagged", dest="include_flagged", action="store_false", default=False,
                             help="Leave out dialogues an automatic filter flagged (the default).")
        flagged.add_argument("--include-flagged", dest="include_flagged", action="store_true")
        parser.add_argument("--val-fraction", type=float, default=0.0,
                            help="Share of seeds for the validation split (0: no split).")
        parser.add_argument("--shuffle-seed", type=int, default=0, help="Seed of the recorded shuffle.")
        parser.add_argument("--no-shuffle", action="store_true", help="Keep dialogue id order.")
        parser.add_argument("--no-dedupe", action="store_true", help="Keep near-duplicates.")

    def handle(self, *args, **options):
        spec = {
            "status": options["status"], "include_flagged": options["include_flagged"],
            "val_fraction": options["val_fraction"], "shuffle_seed": options["shuffle_seed"],
            "shuffle": not options["no_shuffle"], "dedupe": not options["no_dedupe"],
        }
        out = Path(options["out"])
        if options["format"] == formats.HF and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CommandError(f"{out}: for --format hf, OUT must be a new or empty folder")
        if options["seed_set"]:
            seed_set = SeedSet.objects.filter(name=options["seed_set"]).first()
            if seed_set is None:
                raise CommandError(f"--set: no seed set named {options['seed_set']!r}")
            spec["seed_set"] = seed_set.pk
        if options["run"] is not None:
            spec["run"] = options["run"]
        try:
            export = export_start(fmt=options["format"], spec=spec, enqueue=False)
        except ExportError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"export {export.pk}: {export.get_format_display()} -> {options['out']}")

        stop = threading.Event()
        watcher = threading.Thread(target=self._show_progress, args=(export.pk, stop), daemon=True)
        watcher.start()
        try:
            export = export_execute(export.pk, out=options["out"])
        finally:
            stop.set()
            watcher.join()
        if export.status != "succeeded":
            raise CommandError(f"export {export.pk} failed: {export.error}")
        counts = export.counts
        for key in ("selected", "excluded_flagged", "skipped_empty", "collapsed_near_duplicates", "train",
                    "validation", "written"):
            self.stdout.write(f"  {key:<26} {counts.get(key, 0)}")
        splits = SPLITS if export.spec["val_fraction"] > 0 else ("train",)
        for split, path in output_paths(export.format, options["out"], splits).items():
            self.stdout.write(f"  wrote {path}" + (f" ({split})" if split and len(splits) > 1 else ""))
        self.stdout.write(f"  sha256 {export.sha256}  ({export.size_bytes} bytes, artifact {export.path})")

    def _show_progress(self, export_id, stop):
        """A progress bar read from the Export row, as the page reads it (its own thread, its own connection)."""
        from django.db import connection
        from tqdm import tqdm

        bar = None
        try:
            while not stop.wait(0.5):
                row = Export.objects.filter(pk=export_id).values("total", "progress").first()
                if not row or not row["total"]:
                    continue
                if bar is None:
                    bar = tqdm(total=row["total"], unit="dialogue", file=self.stderr._out, leave=False)
                bar.update(row["progress"] - bar.n)
        finally:
            if bar is not None:
                bar.close()
            connection.close()
