from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import path

from baize_eval.roles import REVIEWER, has_role
from collection.models import Dialogue, Export, GenerationRun, SeedSet


@login_required
def home(request):
    context = {}
    if has_role(request.user, REVIEWER):
        context = {
            "seed_sets": SeedSet.objects.order_by("-id")[:10],
            "runs": GenerationRun.objects.select_related("seed_set").order_by("-id")[:10],
            "exports": Export.objects.order_by("-id")[:5],
            "dialogue_count": Dialogue.objects.count(),
        }
    return render(request, "collection/home.html", context)


urlpatterns = [path("", home, name="home")]
