"""Seeds, self-chat generation runs, dialogues, review events and exports.

Turns are stored as a JSON list of {"role": "human"|"ai", "text": str}; collection.turns validates them.
"""
import hashlib
import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from baize_eval.llm.models import Endpoint


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(models.Model):
    """Every long operation is a row: status, heartbeat and error text; tasks claim it with a conditional update."""

    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        abstract = True

    @property
    def is_finished(self):
        return self.status in FINISHED

    def claim(self, from_statuses=(JobStatus.QUEUED,)):
        """Move QUEUED -> RUNNING atomically; False when another worker got there first."""
        now = timezone.now()
        updated = type(self).objects.filter(pk=self.pk, status__in=from_statuses).update(
            status=JobStatus.RUNNING, started_at=now, heartbeat_at=now
        )
        if updated:
            self.refresh_from_db()
        return bool(updated)

    def beat(self):
        type(self).objects.filter(pk=self.pk).update(heartbeat_at=timezone.now())

    def mark_finished(self, status=JobStatus.SUCCEEDED, error=""):
        now = timezone.now()
        type(self).objects.filter(pk=self.pk).exclude(status__in=FINISHED).update(
            status=status, finished_at=now, heartbeat_at=now, error=error
        )
        self.refresh_from_db()


class SeedSet(models.Model):
    name = models.CharField(max_length=200, unique=True)
    source = models.CharField(max_length=200, blank=True, help_text="Where the seeds came from, e.g. quora, medquad.")
    tags = models.JSONField(default=list, blank=True)
    description = models.TextField(blank=True)
    reviews_required = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(5)],
        help_text="Distinct reviewers whose decisions a dialogue needs (double review: 2).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


def normalize_seed_text(text):
    """Whitespace collapsed and stripped; case kept (it carries meaning in code questions)."""
    return " ".join(text.split())


def seed_hash(normalized):
    return hashlib.sha1(normalized.casefold().encode("utf-8")).hexdigest()


class Seed(models.Model):
    seed_set = models.ForeignKey(SeedSet, on_delete=models.CASCADE, related_name="seeds")
    text = models.TextField()
    text_hash = models.CharField(max_length=40)
    source_ref = models.CharField(max_length=300, blank=True, help_text="file:line or file:row it came from.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["seed_set", "text_hash"], name="seed_unique_text_in_set")]
        ordering = ["id"]

    def __str__(self):
        return self.text[:80]


class Import(Job):
    """A seed or corpus import: one transaction; with skip_bad the good rows go in and `report` lists the bad ones."""

    class Kind(models.TextChoices):
        SEEDS = "seeds"
        CORPUS = "corpus"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    seed_set = models.ForeignKey(SeedSet, null=True, blank=True, on_delete=models.SET_NULL, related_name="imports")
    # The set is named here and created (or added to) only when the import succeeds, so a failed import leaves
    # no empty seed set behind.
    seed_set_name = models.CharField(max_length=200, blank=True)
    seed_set_source = models.CharField(max_length=200, blank=True, help_text="Source for a new seed set.")
    seed_set_tags = models.JSONField(default=list, blank=True, help_text="Tags added to the seed set.")
    filename = models.CharField(max_length=500)
    path = models.CharField(max_length=1000, blank=True, help_text="Artifact path of an uploaded file.")
    format = models.CharField(max_length=20, blank=True)
    column = models.CharField(max_length=200, blank=True)
    skip_bad = models.BooleanField(default=False)
    rows_read = models.PositiveIntegerField(default=0)
    imported = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    bad = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=list, blank=True, help_text="Bad rows: [{where, error}], first 1000.")

    class Meta:
        ordering = ["-id"]


class SelfChatTemplate(models.Model):
    """Versioned, editable prompt data. Editing makes a new version; dialogues point at the version they used."""

    class Mode(models.TextChoices):
        TRANSCRIPT = "transcript", "transcript (Baize v1: one completion per seed)"
        TURNS = "turns", "turns (Baize v2: simulated human + clean answer per turn)"

    name = models.CharField(max_length=100)
    version = models.PositiveIntegerField(default=1)
    mode = models.CharField(max_length=12, choices=Mode.choices, default=Mode.TRANSCRIPT)
    prompt = models.TextField(help_text="transcript: the self-chat prompt with {topic}; turns: the human-simulator "
                                        "prompt with {topic} and {transcript}.")
    assistant_system_prompt = models.TextField(blank=True, help_text="turns mode: system prompt of the answering call.")
    human_marker = models.CharField(max_length=20, default="[|Human|]")
    ai_marker = models.CharField(max_length=20, default="[|AI|]")
    end_marker = models.CharField(max_length=20, default="[|END|]", blank=True,
                                  help_text="turns mode: the simulated human writes this to end the conversation.")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="template_unique_version")]
        ordering = ["name", "-version"]

    def __str__(self):
        return f"{self.name} v{self.version}"

    @classmethod
    def create_version(cls, *, name, created_by=None, **fields):
        """The next version of the template `name` (version 1 for a new name); earlier versions stay as they were.

        Two people saving the same name at once both get a version: the unique (name, version) constraint refuses
        the second, which then takes the next number."""
        from django.db import IntegrityError, transaction

        for _ in range(5):
            latest = cls.objects.filter(name=name).aggregate(v=models.Max("version"))["v"] or 0
            try:
                with transaction.atomic():
                    return cls.objects.create(name=name, version=latest + 1, created_by=created_by, **fields)
            except IntegrityError:
                continue
        raise IntegrityError(f"template {name!r}: could not pick a free version number")

    def snapshot(self):
        return {
            "name": self.name, "version": self.version, "mode": self.mode, "prompt": self.prompt,
            "assistant_system_prompt": self.assistant_system_prompt, "human_marker": self.human_marker,
            "ai_marker": self.ai_marker, "end_marker": self.end_marker,
        }


class GenerationRun(Job):
    class Mode(models.TextChoices):
        TRANSCRIPT = "transcript"
        TURNS = "turns"

    name = models.CharField(max_length=200, blank=True)
    seed_set = models.ForeignKey(SeedSet, on_delete=models.PROTECT, related_name="runs")
    sample_size = models.PositiveIntegerField(null=True, blank=True)
    sample_seed = models.BigIntegerField(default=0)
    endpoint = models.ForeignKey(Endpoint, on_delete=models.PROTECT, related_name="+")
    model = models.CharField(max_length=200)
    params = models.JSONField(default=dict, blank=True, help_text="Sampling parameters: temperature, top_p, max_tokens.")
    mode = models.CharField(max_length=12, choices=Mode.choices, default=Mode.TRANSCRIPT)
    max_turns = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1), MaxValueValidator(50)])
    concurrency = models.PositiveSmallIntegerField(default=8, validators=[MinValueValidator(1), MaxValueValidator(512)])
    budget_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    budget_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    template = models.ForeignKey(SelfChatTemplate, on_delete=models.PROTECT, related_name="runs")
    language = models.CharField(max_length=10, default="en", help_text="ISO 639-1 code the dialogues should be in.")
    min_turns = models.PositiveSmallIntegerField(default=2, help_text="Filter: fewer turns than this are flagged.")
    # Live counters, written by the driver; the items and the llm.Call ledger are the truth behind them.
    items_total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)
    # Of those calls, the ones the server answered without usage (llm.Call.usage_estimated): their tokens and cost
    # in these totals are estimates. A counter, so the progress polled every 2 s never counts the ledger.
    estimated_calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))
    budget_exhausted = models.BooleanField(default=False)
    driver_token = models.UUIDField(null=True, blank=True, help_text="Which driver holds the run; a stale one stops.")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="run_status_valid"),
        ]

    def __str__(self):
        return self.name or f"run {self.pk}"

    @property
    def total_tokens(self):
        return self.prompt_tokens + self.completion_tokens

    def budget_reached(self):
        if self.budget_tokens is not None and self.total_tokens >= self.budget_tokens:
            return True
        if self.budget_usd is not None and self.cost_usd >= self.budget_usd:
            return True
        return False


class GenerationItem(models.Model):
    """One seed's place in a run: at most one per (run, seed); leased while in flight."""

    class Status(models.TextChoices):
        PENDING = "pending"
        IN_FLIGHT = "in_flight"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    run = models.ForeignKey(GenerationRun, on_delete=models.CASCADE, related_name="items")
    seed = models.ForeignKey(Seed, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "seed"], name="item_unique_run_seed")]
        indexes = [models.Index(fields=["run", "status"])]


class Dialogue(models.Model):
    """A generated or imported conversation. The original turns are never changed; review edits live in
    ReviewEvent rows, and `turns`/`status`/`version` are the current state derived from them."""

    class Status(models.TextChoices):
        UNDECIDED = "undecided"
        APPROVED = "approved"
        REJECTED = "rejected"
        DISPUTED = "disputed"

    seed_set = models.ForeignKey(SeedSet, on_delete=models.CASCADE, related_name="dialogues")
    seed = models.ForeignKey(Seed, null=True, blank=True, on_delete=models.SET_NULL, related_name="dialogues")
    run = models.ForeignKey(GenerationRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="dialogues")
    source = models.CharField(max_length=100, default="generated", help_text="generated, or import:<format>:<file>.")
    topic = models.TextField()
    original_turns = models.JSONField(default=list)
    raw_output = models.TextField(blank=True)
    parse_error = models.CharField(max_length=300, blank=True)
    generation = models.JSONField(default=dict, blank=True, help_text="model, params, template, prompts, calls "
                                  "(per-call usage, latency, finish_reason).")
    finish_reason = models.CharField(max_length=30, blank=True)
    language = models.CharField(max_length=10, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))
    # Current state (derived from review events).
    turns = models.JSONField(default=list)
    num_turns = models.PositiveSmallIntegerField(default=0, db_index=True)
    length_chars = models.PositiveIntegerField(default=0, db_index=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UNDECIDED)
    version = models.PositiveIntegerField(default=1)
    is_flagged = models.BooleanField(default=False)
    search_document = models.TextField(blank=True, help_text="Topic and turn text, for full-text search.")
    # The current turns' MinHash signature (collection.filters.minhash_bytes), stored by the near-duplicate pass so
    # that a later pass or an export only hashes what is new or edited; None until computed or after an edit.
    minhash = models.BinaryField(null=True, blank=True, editable=False)
    # Review lease: a dialogue open by one reviewer is not handed to another until it expires.
    lease_holder = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seed"], condition=Q(run__isnull=False), name="dialogue_unique_run_seed"),
            models.CheckConstraint(condition=Q(status__in=["undecided", "approved", "rejected", "disputed"]),
                                   name="dialogue_status_valid"),
        ]
        indexes = [
            models.Index(fields=["status", "id"]),
            models.Index(fields=["seed_set", "status", "id"]),
            models.Index(fields=["run", "status", "id"]),
            models.Index(fields=["is_flagged", "status", "id"]),
        ]

    def __str__(self):
        return f"dialogue {self.pk}"

    def set_turns(self, turns):
        """Current turns and the values derived from them."""
        self.turns = turns
        self.num_turns = len(turns)
        self.length_chars = sum(len(t["text"]) for t in turns)
        self.search_document = "\n".join([self.topic] + [t["text"] for t in turns])
        self.minhash = None  # stale: recomputed by the next near-duplicate pass


class DialogueFlag(models.Model):
    """An automatic filter's verdict: flags, never deletes."""

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="flags")
    rule = models.CharField(max_length=40)
    reason = models.CharField(max_length=500)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["dialogue", "rule"], name="flag_unique_rule")]
        indexes = [models.Index(fields=["rule", "dialogue"])]


class RejectReason(models.Model):
    """The editable list of reason codes a reviewer picks from when rejecting."""

    code = models.SlugField(max_length=50, unique=True)
    label = models.CharField(max_length=200)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]

    def __str__(self):
        return self.label


class ReviewEvent(models.Model):
    """Immutable: who did what to which dialogue, with the state before and after."""

    class Action(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"
        EDIT = "edit"
        TRUNCATE = "truncate"
        UNDO = "undo"

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="review_events")
    action = models.CharField(max_length=10, choices=Action.choices)
    created_at = models.DateTimeField(default=timezone.now)
    before = models.JSONField(default=dict, help_text="{status, turns} before the event.")
    after = models.JSONField(default=dict, help_text="{status, turns} after the event.")
    reasons = models.JSONField(default=list, blank=True)
    note = models.TextField(blank=True)
    undoes = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT, related_name="undone_by")
    version = models.PositiveIntegerField(help_text="The dialogue's version after this event.")

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["dialogue", "version"], name="event_unique_version")]
        indexes = [models.Index(fields=["actor", "created_at"])]


class Export(Job):
    """A corpus export: spec, counts, file and its sha256. Same spec on unchanged data: byte-identical file."""

    class Format(models.TextChoices):
        BAIZE = "baize", "Baize JSON"
        OPENAI = "openai", "OpenAI chat JSONL"
        SHAREGPT = "sharegpt", "ShareGPT JSONL"
        HF = "hf", "Hugging Face dataset (save_to_disk + Parquet)"

    format = models.CharField(max_length=10, choices=Format.choices)
    spec = models.JSONField(default=dict, help_text="Filters, split, shuffle seed, dedupe: everything that picks rows.")
    counts = models.JSONField(default=dict, blank=True)
    progress = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    path = models.CharField(max_length=1000, blank=True, help_text="Artifact path (a file, or a zip for hf).")
    sha256 = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    code_version = models.CharField(max_length=64, blank=True)
    token = models.UUIDField(default=uuid.uuid4, editable=False)

    class Meta:
        ordering = ["-id"]
