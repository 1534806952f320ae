"""The API's routes, under /api/ (see collection/api/views.py; schema at /api/schema/, docs at /api/docs/)."""
from django.urls import path
from rest_framework.routers import DefaultRouter

from collection.api import views

router = DefaultRouter()
router.register("seed-sets", views.SeedSetViewSet, basename="seedset")
router.register("seeds", views.SeedViewSet, basename="seed")
router.register("seed-imports", views.SeedImportViewSet, basename="seedimport")
router.register("endpoints", views.EndpointViewSet, basename="endpoint")
router.register("model-prices", views.ModelPriceViewSet, basename="modelprice")
router.register("templates", views.TemplateViewSet, basename="template")
router.register("reject-reasons", views.RejectReasonViewSet, basename="rejectreason")
router.register("runs", views.GenerationRunViewSet, basename="run")
router.register("dialogues", views.DialogueViewSet, basename="dialogue")
router.register("review-events", views.ReviewEventViewSet, basename="reviewevent")
router.register("exports", views.ExportViewSet, basename="export")

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("seed-sets/<int:seed_set_id>/seeds/", views.SeedSetSeedsView.as_view(), name="seedset-seeds"),
    path("dialogues/<int:dialogue_id>/events/", views.DialogueEventsView.as_view(), name="dialogue-events"),
    *router.urls,
]
