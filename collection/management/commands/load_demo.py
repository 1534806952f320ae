"""Load the demo workspace: demo logins, endpoints, prices, templates, a seed set and sample dialogues.

Idempotent: running it again changes nothing that is already there. The sample seeds and dialogues were written
for this project (collection/demo/), not copied from any dataset.
"""
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from baize_eval import roles
from baize_eval.llm.models import Endpoint, ModelPrice
from collection.models import SeedSet
from collection.templates_default import ensure_default_templates

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"
DEMO_USERS = [
    ("admin", "admin-demo-pw", roles.ADMIN),
    ("reviewer", "reviewer-demo-pw", roles.REVIEWER),
    ("rater", "rater-demo-pw", roles.RATER),
]
# USD per million tokens (prompt, completion); edit them in the admin's price table.
DEMO_PRICES = [("gpt-4o-mini", "0.15", "0.60"), ("gpt-4.1-mini", "0.40", "1.60"), ("gpt-3.5-turbo", "0.50", "1.50")]


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Load the demo logins even with DEBUG off.")

    def handle(self, *args, force=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError("The demo has well-known passwords; refusing with DEBUG off (use --force).")
        with transaction.atomic():
            self.load_users()
            self.load_llm_settings()
            ensure_default_templates()
        self.load_seeds()
        self.load_dialogues()
        self.stdout.write(self.style.SUCCESS("Demo workspace ready. Logins (user / password):"))
        for username, password, role in DEMO_USERS:
            self.stdout.write(f"  {username:<9} / {password:<17} ({role})")

    def load_users(self):
        for username, password, role in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.is_staff = user.is_superuser = role == roles.ADMIN
                user.save()
            user.groups.add(Group.objects.get_or_create(name=role)[0])

    def load_llm_settings(self):
        Endpoint.objects.get_or_create(
            name="openai", defaults={"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
                                     "requests_per_minute": 500, "tokens_per_minute": 200_000},
        )
        Endpoint.objects.get_or_create(
            name="local", defaults={"base_url": "http://127.0.0.1:8001/v1", "api_key_env": ""},
        )
        for model, prompt, completion in DEMO_PRICES:
            ModelPrice.objects.get_or_create(
                model=model, defaults={"prompt_usd_per_mtok": prompt, "completion_usd_per_mtok": completion}
            )

    def load_seeds(self):
        from collection.seeding import seed_import_execute, seed_import_start

        if SeedSet.objects.filter(name="demo-questions").exists():
            return
        job = seed_import_start(path=DEMO_DIR / "seeds.txt", seed_set_name="demo-questions", fmt="txt",
                                source="baize-eval demo", tags=["demo"], enqueue=False)
        job = seed_import_execute(job.pk)
        if job.status != "succeeded":
            raise CommandError(f"demo seeds: {job.error}")

    def load_dialogues(self):
        from collection.corpus_import import corpus_import

        if SeedSet.objects.filter(name="demo-dialogues").exists():
            return
        job = corpus_import(path=DEMO_DIR / "dialogues.baize.json", fmt="baize", seed_set_name="demo-dialogues",
                            language="en")
        if job.status != "succeeded":
            raise CommandError(f"demo dialogues: {job.error}")
