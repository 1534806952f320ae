from django.contrib import admin

from collection import models


@admin.register(models.SeedSet)
class SeedSetAdmin(admin.ModelAdmin):
    list_display = ["name", "source", "reviews_required", "created_at"]
    search_fields = ["name"]


@admin.register(models.SelfChatTemplate)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "mode", "created_at"]


@admin.register(models.RejectReason)
class RejectReasonAdmin(admin.ModelAdmin):
    list_display = ["code", "label", "active"]
    list_editable = ["active"]


@admin.register(models.GenerationRun)
class GenerationRunAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "seed_set", "model", "status", "done", "failed", "cost_usd"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in models.GenerationRun._meta.fields if f.name not in ("name",)]
