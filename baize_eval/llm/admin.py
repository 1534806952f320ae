from django.contrib import admin

from baize_eval.llm import models


@admin.register(models.Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    list_display = ["name", "base_url", "api_key_env", "requests_per_minute", "tokens_per_minute"]


@admin.register(models.ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ["model", "prompt_usd_per_mtok", "completion_usd_per_mtok", "updated_at"]
    list_editable = ["prompt_usd_per_mtok", "completion_usd_per_mtok"]
