"""Shapes of the API's requests and responses. Validation of shape and types only; the rules live in services.

API keys never appear here: an endpoint shows the NAME of the environment variable and whether it is set.
"""
import re

from django.conf import settings
from django.core.validators import RegexValidator
from rest_framework import serializers

from baize_eval.llm.models import Endpoint, ModelPrice
from collection.api.filters import SELECTION_PARAMETERS
from collection.services import generation_run_progress
from collection.models import (
    Dialogue,
    DialogueFlag,
    Export,
    GenerationItem,
    GenerationRun,
    Import,
    RejectReason,
    ReviewEvent,
    Seed,
    SeedSet,
    SelfChatTemplate,
)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The project's own secrets: an endpoint naming one of these would send it to the endpoint's server as a key.
RESERVED_ENV_NAMES = {
    "SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
}
TEXT_MAX = 100_000
TOPIC_PLACEHOLDER = RegexValidator(r"\{topic\}", "Must contain {topic}, where the seed goes.")


class UsernameField(serializers.SlugRelatedField):
    """A user shown by username (read-only)."""

    def __init__(self, **kwargs):
        super().__init__(slug_field="username", read_only=True, **kwargs)


# --- Seeds ------------------------------------------------------------------------------------------------
class SeedSetSerializer(serializers.ModelSerializer):
    tags = serializers.ListField(child=serializers.CharField(max_length=100), max_length=50, required=False)
    seed_count = serializers.IntegerField(read_only=True)
    dialogue_count = serializers.IntegerField(read_only=True)
    created_by = UsernameField()

    class Meta:
        model = SeedSet
        fields = ["id", "name", "source", "tags", "description", "reviews_required", "seed_count", "dialogue_count",
                  "created_at", "created_by"]
        read_only_fields = ["created_at"]


class SeedSerializer(serializers.ModelSerializer):
    class Meta:
        model = Seed
        fields = ["id", "seed_set", "text", "text_hash", "source_ref", "created_at"]
        read_only_fields = fields


class ImportSerializer(serializers.ModelSerializer):
    created_by = UsernameField()

    class Meta:
        model = Import
        fields = ["id", "kind", "status", "seed_set", "seed_set_name", "filename", "format", "column", "skip_bad",
                  "rows_read", "imported", "duplicates", "bad", "report", "error", "created_at", "started_at",
                  "finished_at", "heartbeat_at", "created_by"]
        read_only_fields = fields


SEED_FORMATS = ["csv", "tsv", "jsonl", "txt", "parquet"]
BULK_ACTIONS = [ReviewEvent.Action.APPROVE.value, ReviewEvent.Action.REJECT.value]
SELECTION_STATUSES = ["all", *Dialogue.Status.values]


class SeedImportCreateSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The seed file: CSV, TSV, JSONL, plain text (one seed a line) or Parquet.")
    seed_set = serializers.CharField(max_length=200, help_text="Name of the seed set; created when new.")
    column = serializers.CharField(max_length=200, required=False, allow_blank=True,
                                   help_text="Column or JSON key holding the seed text (CSV, TSV, JSONL, Parquet).")
    format = serializers.ChoiceField(choices=SEED_FORMATS, required=False, allow_blank=True,
                                     help_text="Default: from the file name's extension.")
    skip_bad = serializers.BooleanField(default=False, help_text="Import the good rows and report the bad ones.")
    source = serializers.CharField(max_length=200, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), max_length=50, required=False)

    def validate_file(self, file):
        limit = settings.MAX_UPLOAD_MB * 1024 * 1024
        if file.size > limit:
            raise serializers.ValidationError(f"{file.name} is larger than the {settings.MAX_UPLOAD_MB} MB limit.")
        return file


# --- Endpoints, prices, templates ------------------------------------------------------------------------
class EndpointSerializer(serializers.ModelSerializer):
    has_key = serializers.BooleanField(read_only=True, help_text="Whether the named environment variable is set "
                                                                 "on this server. The key itself is never shown.")

    class Meta:
        model = Endpoint
        fields = ["id", "name", "base_url", "api_key_env", "has_key", "requests_per_minute", "tokens_per_minute",
                  "timeout_seconds", "max_attempts", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"timeout_seconds": {"max_value": 3600}, "max_attempts": {"max_value": 100}}

    def validate_api_key_env(self, value):
        if value and not ENV_NAME.match(value):
            raise serializers.ValidationError("Must be an environment variable name (letters, digits, underscore).")
        if value.upper() in RESERVED_ENV_NAMES:
            raise serializers.ValidationError(f"{value} holds this server's own secret; name the LLM key's variable.")
        return value


class ModelPriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelPrice
        fields = ["id", "model", "prompt_usd_per_mtok", "completion_usd_per_mtok", "updated_at"]
        read_only_fields = ["updated_at"]
        extra_kwargs = {"prompt_usd_per_mtok": {"min_value": 0}, "completion_usd_per_mtok": {"min_value": 0}}


class TemplateSerializer(serializers.ModelSerializer):
    created_by = UsernameField()

    class Meta:
        model = SelfChatTemplate
        fields = ["id", "name", "version", "mode", "prompt", "assistant_system_prompt", "human_marker", "ai_marker",
                  "end_marker", "created_at", "created_by"]
        read_only_fields = ["version", "created_at"]
        validators = []  # (name, version) is unique; the version is picked when the row is written.
        extra_kwargs = {"prompt": {"trim_whitespace": False, "max_length": TEXT_MAX, "validators": [TOPIC_PLACEHOLDER]},
                        "assistant_system_prompt": {"trim_whitespace": False, "max_length": TEXT_MAX},
                        # A template's name is reused by its versions; uniqueness is (name, version).
                        "name": {"validators": []}}

    def validate(self, data):
        # Placeholders are replaced literally (other braces are fine); turns mode also shows the conversation.
        if data.get("mode") == SelfChatTemplate.Mode.TURNS and "{transcript}" not in data["prompt"]:
            raise serializers.ValidationError({"prompt": [
                "A turns prompt must contain {transcript}, where the conversation so far goes."]})
        return data


# --- Generation runs --------------------------------------------------------------------------------------
class RunParamsSerializer(serializers.Serializer):
    """Sampling parameters passed to the endpoint. The common ones are checked here; other keys (e.g. `stop`)
    pass through to the server unchanged."""

    temperature = serializers.FloatField(min_value=0, max_value=2, required=False)
    top_p = serializers.FloatField(min_value=0, max_value=1, required=False)
    max_tokens = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False)
    presence_penalty = serializers.FloatField(min_value=-2, max_value=2, required=False)
    frequency_penalty = serializers.FloatField(min_value=-2, max_value=2, required=False)
    seed = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False)

    def to_internal_value(self, data):
        known = super().to_internal_value(data)
        extra = {k: v for k, v in data.items() if k not in self.fields}
        if has_nul(extra):
            raise serializers.ValidationError("Must not contain NUL characters (the database cannot store them).")
        return {**extra, **known}


def has_nul(value):
    """Whether a JSON value holds a NUL character anywhere (Postgres jsonb refuses \\u0000)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


class GenerationRunSerializer(serializers.ModelSerializer):
    seed_set_name = serializers.CharField(source="seed_set.name", read_only=True)
    endpoint_name = serializers.CharField(source="endpoint.name", read_only=True)
    template_name = serializers.CharField(source="template.name", read_only=True)
    template_version = serializers.IntegerField(source="template.version", read_only=True)
    created_by = UsernameField()

    class Meta:
        model = GenerationRun
        fields = ["id", "name", "status", "seed_set", "seed_set_name", "sample_size", "sample_seed", "endpoint",
                  "endpoint_name", "model", "params", "mode", "max_turns", "concurrency", "budget_usd",
                  "budget_tokens", "template", "template_name", "template_version", "language", "min_turns", "items_total", "done",
                  "failed", "calls", "estimated_calls", "prompt_tokens", "completion_tokens", "cost_usd",
                  "budget_exhausted", "error",
                  "created_at", "started_at", "finished_at", "heartbeat_at", "created_by"]
        read_only_fields = fields




class GenerationRunDetailSerializer(GenerationRunSerializer):
    progress = serializers.SerializerMethodField()

    class Meta(GenerationRunSerializer.Meta):
        fields = GenerationRunSerializer.Meta.fields + ["progress"]
        read_only_fields = fields

    def get_progress(self, run) -> dict:
        return generation_run_progress(run)


class GenerationRunCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    seed_set = serializers.PrimaryKeyRelatedField(queryset=SeedSet.objects.all())
    endpoint = serializers.PrimaryKeyRelatedField(queryset=Endpoint.objects.all())
    model = serializers.CharField(max_length=200)
    template = serializers.PrimaryKeyRelatedField(queryset=SelfChatTemplate.objects.all(), required=False,
                                                  help_text="Default: the newest built-in template for the mode.")
    mode = serializers.ChoiceField(choices=GenerationRun.Mode.choices, required=False,
                                  help_text="Default: the template's mode (transcript without a template).")
    params = RunParamsSerializer(required=False)
    max_turns = serializers.IntegerField(min_value=1, max_value=50, default=4)
    concurrency = serializers.IntegerField(min_value=1, max_value=512, default=8)
    budget_usd = serializers.DecimalField(max_digits=12, decimal_places=4, min_value=0, required=False,
                                          allow_null=True)
    budget_tokens = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, allow_null=True)
    sample_size = serializers.IntegerField(min_value=1, max_value=2**31 - 1, required=False, allow_null=True)
    sample_seed = serializers.IntegerField(min_value=-(2**63), max_value=2**63 - 1, default=0)
    language = serializers.CharField(max_length=10, default="en")
    min_turns = serializers.IntegerField(min_value=0, max_value=100, default=2)


class RunBudgetSerializer(serializers.Serializer):
    """A missing field keeps its current value; null removes that limit."""

    budget_usd = serializers.DecimalField(max_digits=12, decimal_places=4, min_value=0, required=False,
                                          allow_null=True)
    budget_tokens = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, allow_null=True)


class FailedItemSerializer(serializers.ModelSerializer):
    seed_text = serializers.CharField(source="seed.text", read_only=True)

    class Meta:
        model = GenerationItem
        fields = ["id", "seed", "seed_text", "attempts", "error", "updated_at"]
        read_only_fields = fields


# --- Dialogues and review ---------------------------------------------------------------------------------
class FlagSerializer(serializers.ModelSerializer):
    class Meta:
        model = DialogueFlag
        fields = ["rule", "reason"]


class TurnSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["human", "ai"])
    text = serializers.CharField(trim_whitespace=False, allow_blank=True)


class DialogueSerializer(serializers.ModelSerializer):
    flags = serializers.SerializerMethodField()

    class Meta:
        model = Dialogue
        fields = ["id", "seed_set", "seed", "run", "source", "topic", "status", "version", "num_turns",
                  "length_chars", "is_flagged", "flags", "created_at", "updated_at"]
        read_only_fields = fields

    def get_flags(self, dialogue) -> list[str]:
        return sorted(flag.rule for flag in dialogue.flags.all())


class DialogueDetailSerializer(DialogueSerializer):
    flags = FlagSerializer(many=True, read_only=True)
    seed_text = serializers.CharField(source="seed.text", read_only=True, allow_null=True, default=None)
    seed_set_name = serializers.CharField(source="seed_set.name", read_only=True)
    turns = TurnSerializer(many=True, read_only=True)
    original_turns = TurnSerializer(many=True, read_only=True)
    lease_holder = UsernameField()

    class Meta(DialogueSerializer.Meta):
        fields = DialogueSerializer.Meta.fields + [
            "seed_text", "seed_set_name", "turns", "original_turns", "raw_output", "parse_error", "generation",
            "finish_reason", "language", "prompt_tokens", "completion_tokens", "cost_usd", "lease_holder",
            "lease_expires_at"]
        read_only_fields = fields


class ReviewEventSerializer(serializers.ModelSerializer):
    actor = UsernameField()

    class Meta:
        model = ReviewEvent
        fields = ["id", "dialogue", "actor", "action", "created_at", "before", "after", "reasons", "note", "undoes",
                  "version"]
        read_only_fields = fields


class RejectReasonSerializer(serializers.ModelSerializer):
    class Meta:
        model = RejectReason
        fields = ["code", "label", "active"]
        read_only_fields = fields


class ReviewActionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=ReviewEvent.Action.choices)
    expected_version = serializers.IntegerField(min_value=1, max_value=2**31 - 1,
                                                help_text="The dialogue version you saw; a stale one gets 409.")
    reasons = serializers.ListField(child=serializers.SlugField(max_length=50), max_length=20, required=False,
                                    help_text="reject: reason codes (see /api/reject-reasons/).")
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    turn_index = serializers.IntegerField(min_value=0, max_value=10_000, required=False,
                                          help_text="edit, truncate: 0-based index of the turn.")
    text = serializers.CharField(max_length=TEXT_MAX, required=False, trim_whitespace=False,
                                 help_text="edit: the turn's new text, kept exactly as sent.")

    def validate(self, data):
        action = data["action"]
        needed = {"reject": ["reasons"], "edit": ["turn_index", "text"], "truncate": ["turn_index"]}.get(action, [])
        missing = {name: [f"Required for {action}."] for name in needed if name not in data}
        if missing:
            raise serializers.ValidationError(missing)
        return data


class BulkReviewSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=BULK_ACTIONS)
    reasons = serializers.ListField(child=serializers.SlugField(max_length=50), max_length=20, required=False)
    filter = serializers.DictField(help_text="The review queue's filters: " + ", ".join(
        name for name, _, _ in SELECTION_PARAMETERS) + ". An empty object selects every dialogue.")

    def validate(self, data):
        if data["action"] == ReviewEvent.Action.REJECT and not data.get("reasons"):
            raise serializers.ValidationError({"reasons": ["Required for reject."]})
        return data


class BulkReviewResultSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Dialogues that got an event.")


class ReviewResultSerializer(serializers.Serializer):
    event = ReviewEventSerializer()
    dialogue = DialogueDetailSerializer()


# --- Exports ----------------------------------------------------------------------------------------------
class ExportSerializer(serializers.ModelSerializer):
    created_by = UsernameField()
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Export
        fields = ["id", "format", "status", "spec", "counts", "progress", "total", "sha256", "size_bytes",
                  "code_version", "error", "download_url", "created_at", "started_at", "finished_at", "heartbeat_at",
                  "created_by"]
        read_only_fields = fields

    def get_download_url(self, export) -> str | None:
        if export.status != "succeeded":
            return None
        return f"/api/exports/{export.pk}/download/"


class ExportCreateSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=Export.Format.choices)
    seed_set = serializers.IntegerField(min_value=0, required=False)
    run = serializers.IntegerField(min_value=0, required=False)
    status = serializers.ChoiceField(choices=SELECTION_STATUSES, default="approved")
    flag = serializers.CharField(max_length=500, required=False, allow_blank=True)
    min_turns = serializers.IntegerField(min_value=0, required=False)
    max_turns = serializers.IntegerField(min_value=0, required=False)
    min_length = serializers.IntegerField(min_value=0, required=False)
    max_length = serializers.IntegerField(min_value=0, required=False)
    q = serializers.CharField(max_length=500, required=False, allow_blank=True)
    include_flagged = serializers.BooleanField(default=False, help_text="Flagged dialogues are left out unless set "
                                                                        "(or unless `flag` asks for them).")
    dedupe = serializers.BooleanField(default=True, help_text="Collapse near-duplicates (MinHash).")
    dedupe_threshold = serializers.FloatField(min_value=0.01, max_value=1, required=False,
                                              help_text="Jaccard similarity above which dialogues collapse.")
    shuffle = serializers.BooleanField(default=True)
    shuffle_seed = serializers.IntegerField(min_value=0, max_value=2**63 - 1, default=0,
                                            help_text="Recorded, so the same spec gives the same file.")
    val_fraction = serializers.FloatField(min_value=0, max_value=0.99, default=0.0,
                                          help_text="Share of seeds in the validation split (split by seed).")
