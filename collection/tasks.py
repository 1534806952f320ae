"""Celery entry points. Payloads are ids; the job row is the truth and each task claims it before working.

Queues: `generation` (LLM calls, I/O bound), `default` (imports, exports, sweeps), `gpu` (later: training).
"""
from celery import shared_task
