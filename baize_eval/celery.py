"""The Celery app. Queues: `generation` (I/O-bound LLM calls), `gpu` (training, inference), `default`."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baize_eval.settings")

app = Celery("baize_eval")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
