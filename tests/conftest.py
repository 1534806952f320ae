"""Shared fixtures: the four people every permission test needs, on Postgres (never SQLite)."""
import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client

from baize_eval import roles
from baize_eval.celery import app as celery_app


def pytest_configure(config):
    if not settings.IS_POSTGRES:
        raise pytest.UsageError(
            "The test suite runs on Postgres only: set DATABASE_URL (make test does), "
            "e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/baize_eval"
        )


def make_user(username, *group_names, superuser=False):
    user = User.objects.create_user(username=username, password="pw-" + username, is_superuser=superuser, is_staff=superuser)
    for name in group_names:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


@pytest.fixture
def admin_user(db):
    return make_user("ada", roles.ADMIN, superuser=True)


@pytest.fixture
def reviewer(db):
    return make_user("rita", roles.REVIEWER)


@pytest.fixture
def reviewer2(db):
    return make_user("rob", roles.REVIEWER)


@pytest.fixture
def rater(db):
    return make_user("raul", roles.RATER)


@pytest.fixture
def outsider(db):
    return make_user("otto")


def client_for(user):
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def as_reviewer(reviewer):
    return client_for(reviewer)


@pytest.fixture
def as_admin(admin_user):
    return client_for(admin_user)


@pytest.fixture
def as_rater(rater):
    return client_for(rater)


@pytest.fixture
def as_outsider(outsider):
    return client_for(outsider)


@pytest.fixture
def artifacts(settings, tmp_path):
    """Artifact storage in a per-test folder."""
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": tmp_path / "artifacts"}}}
    return tmp_path / "artifacts"


@pytest.fixture
def eager():
    """Celery tasks run in-process for this test."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous
