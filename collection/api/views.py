"""The REST API: seeds, imports, endpoints, prices, templates, generation runs, dialogues, review and exports.

Every list is paginated (?limit=&offset=, at most 500 a page), filtered and ordered (?ordering=). Reviewers (and
admins) may use it; raters and users without a role get 403, anonymous callers 401. Authenticate with a session
or with `Authorization: Token <key>` (POST /api/auth/token/ with username and password gives the key).

Views authorize, check the request's shape, call a service and respond; the rules live in the services.
"""
import json
import os
import posixpath

from django.core.files.storage import default_storage
from django.db.models import Count, IntegerField, OuterRef, Prefetch, Subquery, Value
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404
from django.utils.text import get_valid_filename
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import generics, mixins, serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotAuthenticated, NotFound, ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from baize_eval.llm.models import Endpoint, ModelPrice
from baize_eval.roles import IsReviewer
from collection import review as reviewing
from collection import services
from collection.api import filters
from collection.api import serializers as s
from collection.api.permissions import ReviewerReadsAdminWrites
from collection.artifacts import download_response
from collection.exporting import ExportError, export_start
from collection.models import (
    Dialogue,
    DialogueFlag,
    Export,
    GenerationRun,
    Import,
    RejectReason,
    ReviewEvent,
    Seed,
    SeedSet,
    SelfChatTemplate,
)
from collection.seeding import SeedImportError, seed_import_start
from collection.templates_default import latest_template


class BinaryRenderer(BaseRenderer):
    """Lets a download be asked for as application/octet-stream; errors still go out as JSON text."""

    media_type = "application/octet-stream"
    format = "bin"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes) else json.dumps(data).encode()


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object changed or is in a state that does not allow this."
    default_code = "conflict"


class ReviewerAPI:
    """Reviewer role (admins too); paginated, filterable, orderable."""

    permission_classes = [IsReviewer]
    pagination_class = Pagination
    filter_backends = [DjangoFilterBackend, OrderingFilter]


CONFLICT_RESPONSE = OpenApiResponse(
    response=inline_serializer("ConflictError", {
        "detail": serializers.CharField(),
        "current_version": serializers.IntegerField(required=False, help_text="Review: the dialogue's version now."),
    }),
    description="The object changed since you read it, or its state does not allow the action.",
)


# --- Auth -------------------------------------------------------------------------------------------------
@extend_schema_view(
    post=extend_schema(
        summary="Get your API token",
        description="Send username and password (JSON or form); use the key as `Authorization: Token <key>`.",
        responses={200: inline_serializer("TokenResponse", {"token": serializers.CharField()})},
        auth=[],
    ),
    delete=extend_schema(summary="Revoke your API token", request=None, responses={204: None}),
)
class TokenView(ObtainAuthToken):
    def delete(self, request):
        if not request.user.is_authenticated:
            raise NotAuthenticated()
        Token.objects.filter(user=request.user).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Seeds ------------------------------------------------------------------------------------------------
def count_of(model, field):
    rows = model.objects.filter(**{field: OuterRef("pk")}).order_by().values(field).annotate(n=Count("*")).values("n")
    return Coalesce(Subquery(rows, output_field=IntegerField()), Value(0))


class SeedSetViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                     viewsets.GenericViewSet):
    """Seed sets: name, source, tags, with how many seeds and dialogues each holds."""

    serializer_class = s.SeedSetSerializer
    filterset_class = filters.SeedSetFilter
    ordering_fields = ["id", "name", "created_at"]
    ordering = ["name"]

    def get_queryset(self):
        return SeedSet.objects.select_related("created_by").annotate(
            seed_count=count_of(Seed, "seed_set"), dialogue_count=count_of(Dialogue, "seed_set"))

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        seed_set = serializer.save(created_by=request.user)
        data = self.get_serializer(self.get_queryset().get(pk=seed_set.pk)).data
        return Response(data, status=status.HTTP_201_CREATED)


class SeedViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Seeds of every set; ?seed_set=<id> picks one set (or use /api/seed-sets/<id>/seeds/)."""

    queryset = Seed.objects.all()
    serializer_class = s.SeedSerializer
    filterset_class = filters.SeedFilter
    ordering_fields = ["id"]
    ordering = ["id"]


class SeedSetSeedsView(ReviewerAPI, generics.ListAPIView):
    """The seeds of one seed set."""

    serializer_class = s.SeedSerializer
    filterset_class = filters.SeedFilter
    ordering_fields = ["id"]
    ordering = ["id"]

    queryset = Seed.objects.none()  # for the schema; the real one depends on the URL

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        seed_set = get_object_or_404(SeedSet, pk=self.kwargs["seed_set_id"])
        return Seed.objects.filter(seed_set=seed_set)


class SeedImportViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                        viewsets.GenericViewSet):
    """Seed imports: upload a file to start one; read its status, counts and bad-row report."""

    queryset = Import.objects.filter(kind=Import.Kind.SEEDS).select_related("seed_set", "created_by")
    filterset_class = filters.ImportFilter
    ordering_fields = ["id", "created_at"]
    ordering = ["-id"]
    parser_classes = [MultiPartParser, FormParser]

    def get_serializer_class(self):
        return s.SeedImportCreateSerializer if self.action == "create" else s.ImportSerializer

    @extend_schema(request=s.SeedImportCreateSerializer, responses={201: s.ImportSerializer})
    def create(self, request, *args, **kwargs):
        serializer = s.SeedImportCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data["file"]
        filename = get_valid_filename(posixpath.basename(upload.name.replace("\\", "/"))) or "upload"
        # The upload goes to artifact storage (a local folder, or S3) so whichever worker runs the import reads it.
        stored = default_storage.save(f"imports/{filename}", upload)
        try:
            job = seed_import_start(
                path=stored, seed_set_name=data["seed_set"], column=data.get("column") or None,
                fmt=data.get("format") or None, skip_bad=data["skip_bad"], filename=filename,
                source=data.get("source", ""), tags=tuple(data.get("tags", ())), created_by=request.user,
            )
        except SeedImportError as error:
            default_storage.delete(stored)
            raise ValidationError(field_error(error, s.SeedImportCreateSerializer, {"seed set": "seed_set"})) from None
        job.refresh_from_db()
        return Response(s.ImportSerializer(job).data, status=status.HTTP_201_CREATED)


# --- Endpoints, prices, templates, reasons ----------------------------------------------------------------
class EndpointViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                      mixins.UpdateModelMixin, viewsets.GenericViewSet):
    """OpenAI-compatible endpoints. Shows the NAME of the key's environment variable and whether it is set,
    never the key. Reviewers read; admins create and change."""

    queryset = Endpoint.objects.all()
    serializer_class = s.EndpointSerializer
    permission_classes = [ReviewerReadsAdminWrites]
    filterset_fields = ["name"]
    ordering_fields = ["id", "name"]
    ordering = ["name"]


class ModelPriceViewSet(ReviewerAPI, viewsets.ModelViewSet):
    """The price table (USD per million tokens, by model name). Reviewers read; admins write."""

    queryset = ModelPrice.objects.all()
    serializer_class = s.ModelPriceSerializer
    permission_classes = [ReviewerReadsAdminWrites]
    filterset_class = filters.ModelPriceFilter
    ordering_fields = ["id", "model", "updated_at"]
    ordering = ["model"]


class TemplateViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                      viewsets.GenericViewSet):
    """Self-chat templates. Templates are never changed in place: creating one with an existing name makes its
    next version, so dialogues keep pointing at the exact version they were generated with."""

    queryset = SelfChatTemplate.objects.select_related("created_by")
    serializer_class = s.TemplateSerializer
    filterset_fields = ["name", "mode", "version"]
    ordering_fields = ["id", "name", "version", "created_at"]
    ordering = ["name", "-version"]

    def perform_create(self, serializer):
        serializer.instance = SelfChatTemplate.create_version(created_by=self.request.user,
                                                              **serializer.validated_data)


class RejectReasonViewSet(ReviewerAPI, mixins.ListModelMixin, viewsets.GenericViewSet):
    """The reason codes a reject may name."""

    queryset = RejectReason.objects.all()
    serializer_class = s.RejectReasonSerializer
    filterset_fields = ["active"]
    ordering_fields = ["code"]
    ordering = ["code"]


# --- Generation runs --------------------------------------------------------------------------------------
class GenerationRunViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                           viewsets.GenericViewSet):
    """Self-chat generation runs: start one, follow its progress (done, failed, in flight, tokens, cost, ETA),
    pause, resume, cancel, or put its failed seeds back in the queue."""

    queryset = GenerationRun.objects.select_related("seed_set", "endpoint", "template", "created_by")
    filterset_class = filters.GenerationRunFilter
    ordering_fields = ["id", "created_at", "status"]
    ordering = ["-id"]

    def get_serializer_class(self):
        if self.action == "create":
            return s.GenerationRunCreateSerializer
        if self.action == "list":
            return s.GenerationRunSerializer
        return s.GenerationRunDetailSerializer

    @extend_schema(request=s.GenerationRunCreateSerializer, responses={201: s.GenerationRunDetailSerializer})
    def create(self, request, *args, **kwargs):
        serializer = s.GenerationRunCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if "template" not in data:
            data["template"] = latest_template(data.get("mode", GenerationRun.Mode.TRANSCRIPT))
        try:
            run = services.generation_run_start(created_by=request.user, **data)
        except services.RunSpecError as error:
            raise ValidationError({error.field: [str(error).partition(": ")[2]]}) from None
        return Response(self._detail(run), status=status.HTTP_201_CREATED)

    def _detail(self, run):
        return s.GenerationRunDetailSerializer(self.get_queryset().get(pk=run.pk)).data

    def _lifecycle(self, change, refusal):
        run = self.get_object()
        if not change(run=run):
            # The services change only runs in a state that allows it; say which state it is in.
            run.refresh_from_db()
            raise Conflict(refusal.format(run=run))
        return Response(self._detail(run))

    @extend_schema(request=None, responses={200: s.GenerationRunDetailSerializer, 409: CONFLICT_RESPONSE},
                   summary="Pause: stop sending new seeds; requests in flight finish")
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._lifecycle(services.generation_run_pause, "Run {run.pk} is {run.status}; only a queued or "
                                                              "running run can be paused.")

    @extend_schema(request=None, responses={200: s.GenerationRunDetailSerializer, 409: CONFLICT_RESPONSE},
                   summary="Resume a paused run")
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._lifecycle(services.generation_run_resume, "Run {run.pk} is {run.status}; only a paused run "
                                                               "can be resumed.")

    @extend_schema(request=None, responses={200: s.GenerationRunDetailSerializer, 409: CONFLICT_RESPONSE},
                   summary="Cancel for good; dialogues already made are kept")
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._lifecycle(services.generation_run_cancel, "Run {run.pk} is already {run.status}.")

    @extend_schema(request=None, responses={200: s.GenerationRunDetailSerializer, 409: CONFLICT_RESPONSE},
                   summary="Put the failed seeds back in the queue")
    @action(detail=True, methods=["post"], url_path="retry-failed")
    def retry_failed(self, request, pk=None):
        return self._lifecycle(services.generation_run_retry_failed, "Run {run.pk} ({run.status}) has no failed "
                                                                     "seeds to retry.")


    @extend_schema(request=s.RunBudgetSerializer, responses={200: s.GenerationRunDetailSerializer},
                   summary="Change the budget",
                   description="A run that stopped on its budget is queued again when seeds are left to do.")
    @action(detail=True, methods=["post"])
    def budget(self, request, pk=None):
        run = self.get_object()
        serializer = s.RunBudgetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        services.generation_run_set_budget(run=run, budget_usd=data.get("budget_usd", run.budget_usd),
                                           budget_tokens=data.get("budget_tokens", run.budget_tokens))
        return Response(self._detail(run))

    @extend_schema(responses={200: s.FailedItemSerializer(many=True)}, filters=False,
                   summary="The run's failed seeds with their errors (first 200)")
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def failed(self, request, pk=None):
        items = services.generation_run_failed_items(self.get_object())
        return Response(s.FailedItemSerializer(items, many=True).data)


# --- Dialogues and review ---------------------------------------------------------------------------------
SELECTION_QUERY = [
    OpenApiParameter(name, {"integer": int, "string": str}[kind], description=description)
    for name, kind, description in filters.SELECTION_PARAMETERS
]
LIST_DEFERRED = ("turns", "original_turns", "raw_output", "generation", "search_document")


class DialogueViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Dialogues, filtered exactly like the review queue; one dialogue with its current and original turns,
    flags, generation metadata and version. Review actions: POST /api/dialogues/<id>/review/."""

    filter_backends = [filters.DialogueSelectionFilter, OrderingFilter]
    ordering_fields = ["id", "num_turns", "length_chars", "created_at", "updated_at", "status"]
    ordering = ["id"]

    def get_queryset(self):
        flags = DialogueFlag.objects.only("id", "dialogue_id", "rule", "reason")
        qs = Dialogue.objects.prefetch_related(Prefetch("flags", queryset=flags))
        if self.action == "list":
            return qs.defer(*LIST_DEFERRED)
        return qs.select_related("seed", "seed_set", "lease_holder")

    def get_serializer_class(self):
        return s.DialogueSerializer if self.action == "list" else s.DialogueDetailSerializer

    @extend_schema(request=s.ReviewActionSerializer,
                   responses={201: s.ReviewResultSerializer, 409: CONFLICT_RESPONSE},
                   summary="Approve, reject, edit a turn, truncate, or undo",
                   description="Send the dialogue version you saw as expected_version; if someone changed the "
                               "dialogue since, nothing is written and the answer is 409 with who changed it.")
    @action(detail=True, methods=["post"])
    def review(self, request, pk=None):
        dialogue = self.get_object()
        serializer = s.ReviewActionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        act = data["action"]
        common = {"dialogue": dialogue, "actor": request.user, "expected_version": data["expected_version"]}
        try:
            if act == "approve":
                event = reviewing.review_approve(note=data.get("note", ""), **common)
            elif act == "reject":
                event = reviewing.review_reject(reasons=data["reasons"], note=data.get("note", ""), **common)
            elif act == "edit":
                event = reviewing.review_edit_turn(turn_index=data["turn_index"], text=data["text"], **common)
            elif act == "truncate":
                event = reviewing.review_truncate(turn_index=data["turn_index"], **common)
            else:
                event = reviewing.review_undo(**common)
        except reviewing.ReviewConflict as error:
            # Also the version now, so a client can reload and decide whether its change still applies.
            return Response({"detail": str(error), "current_version": error.current_version},
                            status=status.HTTP_409_CONFLICT)
        except reviewing.ReviewError as error:
            raise ValidationError(field_error(error, s.ReviewActionSerializer)) from None
        dialogue = self.get_queryset().get(pk=dialogue.pk)
        return Response({"event": s.ReviewEventSerializer(event).data,
                         "dialogue": s.DialogueDetailSerializer(dialogue).data}, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None, responses={200: s.DialogueDetailSerializer, 204: OpenApiResponse(description="Nothing left.")},
        parameters=SELECTION_QUERY + [OpenApiParameter("after_id", int, description="Start after this dialogue id.")],
        summary="Lease the next undecided dialogue of a filter",
        description="The queue's next undecided dialogue that nobody else holds, leased to you for ten minutes "
                    "so no other reviewer is handed it; 204 when the filter has none left.")
    @action(detail=False, methods=["post"], filter_backends=[])
    def next(self, request):
        spec = filters.clean_selection(request.query_params)
        after_id = request.query_params.get("after_id") or None
        if after_id is not None:
            try:
                after_id = int(after_id)
            except ValueError:
                raise ValidationError({"after_id": ["Must be a whole number."]}) from None
        dialogue = reviewing.lease_next(actor=request.user, spec=spec, after_id=after_id)
        if dialogue is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(s.DialogueDetailSerializer(self.get_queryset().get(pk=dialogue.pk)).data)

    @extend_schema(request=s.BulkReviewSerializer, responses={200: s.BulkReviewResultSerializer},
                   summary="Approve or reject every dialogue a filter selects",
                   description="One review event per dialogue; dialogues leased by another reviewer are skipped.")
    @action(detail=False, methods=["post"], url_path="bulk-review")
    def bulk_review(self, request):
        serializer = s.BulkReviewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        spec = filters.clean_selection(data["filter"])
        try:
            count = reviewing.review_bulk(spec=spec, actor=request.user, action=data["action"],
                                       reasons=tuple(data.get("reasons", ())))
        except reviewing.ReviewError as error:
            raise ValidationError(field_error(error, s.BulkReviewSerializer)) from None
        return Response({"count": count})


def field_error(error, serializer_class, aliases=None):
    """A service error "field: message" as {field: [message]} when it names one of the request's fields."""
    field, _, message = str(error).partition(":")
    field = (aliases or {}).get(field, field)
    if message and field in serializer_class().fields:
        return {field: [message.strip()]}
    return {"non_field_errors": [str(error)]}


class ReviewEventViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Review events (immutable): who did what to which dialogue, with the state before and after."""

    queryset = ReviewEvent.objects.select_related("actor")
    serializer_class = s.ReviewEventSerializer
    filterset_class = filters.ReviewEventFilter
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]


class DialogueEventsView(ReviewerAPI, generics.ListAPIView):
    """The review events of one dialogue, oldest first; ?actor=<username>&action=<action> narrow them."""

    serializer_class = s.ReviewEventSerializer
    filterset_class = filters.ReviewEventFilter
    ordering_fields = ["id", "created_at"]
    ordering = ["id"]

    queryset = ReviewEvent.objects.none()  # for the schema; the real one depends on the URL

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        dialogue = get_object_or_404(Dialogue.objects.only("id"), pk=self.kwargs["dialogue_id"])
        return ReviewEvent.objects.filter(dialogue=dialogue).select_related("actor")


# --- Exports ----------------------------------------------------------------------------------------------
class ExportViewSet(ReviewerAPI, mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                    viewsets.GenericViewSet):
    """Corpus exports: start one with the queue's filters and export options, follow it, download the file."""

    queryset = Export.objects.select_related("created_by")
    filterset_class = filters.ExportFilter
    ordering_fields = ["id", "created_at"]
    ordering = ["-id"]

    def get_serializer_class(self):
        return s.ExportCreateSerializer if self.action == "create" else s.ExportSerializer

    @extend_schema(request=s.ExportCreateSerializer, responses={201: s.ExportSerializer})
    def create(self, request, *args, **kwargs):
        serializer = s.ExportCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        spec = dict(serializer.validated_data)
        fmt = spec.pop("format")
        try:
            export = export_start(fmt=fmt, spec=spec, created_by=request.user)
        except ExportError as error:
            raise ValidationError(field_error(error, s.ExportCreateSerializer)) from None
        export.refresh_from_db()
        return Response(s.ExportSerializer(export).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 409: CONFLICT_RESPONSE},
                   summary="Download the exported file")
    @action(detail=True, methods=["get"], renderer_classes=[JSONRenderer, BinaryRenderer])
    def download(self, request, pk=None):
        export = self.get_object()
        if export.status != "succeeded" or not export.path:
            raise Conflict(f"Export {export.pk} is {export.status}; the file is there once it has succeeded.")
        try:
            return download_response(export.path, filename=os.path.basename(export.path))
        except FileNotFoundError:
            raise NotFound(f"Export {export.pk}'s file is no longer in artifact storage.") from None
