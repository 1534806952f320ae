"""Endpoints, the price table and the usage ledger. Used by collection, evaluation and training; imports none."""
import os
from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models


class Endpoint(models.Model):
    """An OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp). The key is read from an environment
    variable named here at call time; it is never stored in the database, shown or returned."""

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(max_length=500)
    api_key_env = models.CharField(
        max_length=100, default="OPENAI_API_KEY", blank=True,
        help_text="Name of the environment variable that holds the API key (empty: no key).",
    )
    requests_per_minute = models.PositiveIntegerField(default=0, help_text="0: unlimited.")
    tokens_per_minute = models.PositiveIntegerField(default=0, help_text="0: unlimited.")
    timeout_seconds = models.FloatField(default=120.0, validators=[MinValueValidator(0.1)])
    max_attempts = models.PositiveSmallIntegerField(default=6, validators=[MinValueValidator(1)])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def api_key(self):
        """The key from the environment; local servers accept any non-empty string."""
        if not self.api_key_env:
            return "none"
        return os.environ.get(self.api_key_env) or "none"

    @property
    def has_key(self):
        return bool(self.api_key_env and os.environ.get(self.api_key_env))


class ModelPrice(models.Model):
    """Editable price table: USD per million prompt and completion tokens, by model name."""

    model = models.CharField(max_length=200, unique=True)
    prompt_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    completion_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self):
        return self.model

    def cost(self, prompt_tokens, completion_tokens):
        return (
            Decimal(prompt_tokens) * self.prompt_usd_per_mtok
            + Decimal(completion_tokens) * self.completion_usd_per_mtok
        ) / Decimal(1_000_000)


class Call(models.Model):
    """The usage ledger: one row per chat-completion attempt that reached the endpoint.

    `job_kind`/`job_id` name the job that paid for it (e.g. "generation_run", 12) without importing its app."""

    class Outcome(models.TextChoices):
        OK = "ok"
        ERROR = "error"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.PROTECT, related_name="calls")
    model = models.CharField(max_length=200)
    purpose = models.CharField(max_length=50, blank=True)
    job_kind = models.CharField(max_length=50, blank=True)
    job_id = models.BigIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.OK)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(
        default=False, help_text="The server sent no usage: the tokens, and so the cost, are estimated from the text "
                                 "(4 characters a token).",
    )
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["job_kind", "job_id"])]
