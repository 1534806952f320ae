"""One settings module, driven by environment variables (see README.md, "Configuration").

No DATABASE_URL: the embedded default (SQLite under var/, Celery tasks run in-process).
With DATABASE_URL and CELERY_BROKER_URL: Postgres and Redis, workers per queue.
"""
import importlib.util
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from baize_eval import env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = env.flag("DEBUG", default=True)
SECRET_KEY = env.text("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is false.")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production-0123456789abcdef"
elif not DEBUG and len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters long when DEBUG is false.")

ALLOWED_HOSTS = env.listing("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the served host names when DEBUG is false.")
CSRF_TRUSTED_ORIGINS = env.listing("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, so /api/docs/ works offline
    "baize_eval.llm",
    "collection",
    "evaluation",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "baize_eval.urls"
WSGI_APPLICATION = "baize_eval.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "baize_eval.roles.context",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------------------
DATABASE_URL = env.url("DATABASE_URL", schemes={"postgres", "postgresql", "sqlite"})
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env.integer("DB_CONN_MAX_AGE", 60))}
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # JIT compilation costs tens of milliseconds per query that the planner thinks is big (the review queue's
        # counts over a million dialogues) and pays off only for long analytics; pages want it off.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("options", "-c jit=off")
else:
    VAR_DIR.mkdir(exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "baize.sqlite3",
            "OPTIONS": {"timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
IS_POSTGRES = DATABASES["default"]["ENGINE"].endswith("postgresql")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery -----------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env.url("CELERY_BROKER_URL", schemes={"redis", "rediss", "memory"})
if DATABASE_URL and IS_POSTGRES and not CELERY_BROKER_URL:
    raise ImproperlyConfigured("CELERY_BROKER_URL must be set when DATABASE_URL points at Postgres (e.g. redis://127.0.0.1:6379/0).")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
if not CELERY_BROKER_URL:
    CELERY_BROKER_URL = "memory://localhost/"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_DEFAULT_QUEUE = "default"
# Every task's queue, by name: workers take them with -Q generation,default (Makefile `worker`, tests/processes.py).
CELERY_TASK_ROUTES = {
    "collection.drive_generation_run": {"queue": "generation"},
    "collection.import_seeds": {"queue": "default"},
    "collection.import_corpus": {"queue": "default"},
    "collection.export_corpus": {"queue": "default"},
    "collection.flag_near_duplicates": {"queue": "default"},
    "collection.review_bulk": {"queue": "default"},
    "collection.recover_stale_jobs": {"queue": "default"},
    "collection.fail_stale_exports": {"queue": "default"},
}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    # Periodic recovery work is listed here and only here.
    "recover-stale-jobs": {"task": "collection.recover_stale_jobs", "schedule": 30.0},
    "fail-stale-exports": {"task": "collection.fail_stale_exports", "schedule": 60.0},
}
# Redis for shared rate limits and leases; defaults to the broker when that is Redis.
REDIS_URL = env.url("REDIS_URL", schemes={"redis", "rediss"}) or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else ""
)

# --- Jobs -------------------------------------------------------------------------------------------------
JOB_HEARTBEAT_SECONDS = env.number("JOB_HEARTBEAT_SECONDS", 5.0, minimum=0.1)
JOB_STALE_SECONDS = env.number("JOB_STALE_SECONDS", 60.0, minimum=0.5)

# --- LLM endpoints ----------------------------------------------------------------------------------------
OPENAI_BASE_URL = env.url("OPENAI_BASE_URL", schemes={"http", "https"}, default="https://api.openai.com/v1")
# The key itself is read from the environment at call time (llm.Endpoint.api_key_env); never stored or shown.

# --- Artifacts --------------------------------------------------------------------------------------------
ARTIFACT_DIR = Path(env.text("BAIZE_ARTIFACT_DIR") or (VAR_DIR / "artifacts")).resolve()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": ARTIFACT_DIR}},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage" if not DEBUG
                    else "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
ARTIFACT_S3_BUCKET = env.text("BAIZE_ARTIFACT_S3_BUCKET")
if ARTIFACT_S3_BUCKET:
    # Any S3-compatible store (AWS, MinIO, R2) through django-storages; boto3 reads the credentials from the usual
    # AWS_* variables. Checked here: django-storages would only fail at the first upload or download.
    if importlib.util.find_spec("boto3") is None:
        raise ImproperlyConfigured("BAIZE_ARTIFACT_S3_BUCKET is set but boto3 is not installed: "
                                   "pip install -r requirements.txt.")
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": ARTIFACT_S3_BUCKET,
            "endpoint_url": env.url("BAIZE_ARTIFACT_S3_ENDPOINT", schemes={"http", "https"}) or None,
            # Like the local folder: a second upload of the same name gets a new name, never replaces the first.
            "file_overwrite": False,
        },
    }
# pyarrow (Parquet readers, the Hugging Face export) allocates through the system allocator, which hands freed
# memory back; its default (jemalloc) keeps it cached, about 35 MB more peak memory in a million-row export.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
MAX_UPLOAD_MB = env.integer("MAX_UPLOAD_MB", 512, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Auth, static, i18n -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend", "rest_framework.filters.OrderingFilter"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "baize-eval API",
    "DESCRIPTION": (
        "Seeds, self-chat generation runs, dialogues, review events and exports.\n\n"
        "Authenticate with `Authorization: Token <key>`; POST your username and password to /api/auth/token/ "
        "for the key (DELETE there revokes it). Reviewers and admins may use the API; some writes are for admins. "
        "Lists take ?limit=&offset= (at most 500 a page) and ?ordering=; errors name the field that is wrong."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Requests get their own components, so an upload is typed as a binary file (not a URL) in the schema.
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a "status"/"action"/"format"/"mode" field with different choices: name each set.
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "collection.models.JobStatus",
        "DialogueStatusEnum": "collection.models.Dialogue.Status",
        "ReviewActionEnum": "collection.models.ReviewEvent.Action",
        "ExportFormatEnum": "collection.models.Export.Format",
        "GenerationModeEnum": "collection.models.GenerationRun.Mode",
        "TemplateModeEnum": "collection.models.SelfChatTemplate.Mode",
        "SeedFileFormatEnum": "collection.api.serializers.SEED_FORMATS",
        "BulkReviewActionEnum": "collection.api.serializers.BULK_ACTIONS",
        "SelectionStatusEnum": "collection.api.serializers.SELECTION_STATUSES",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.text("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "httpx2": {"level": "WARNING"}, "openai": {"level": "WARNING"}},
}

if not DEBUG:
    SECURE_SSL_REDIRECT = env.flag("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.integer("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_CONTENT_TYPE_NOSNIFF = True
