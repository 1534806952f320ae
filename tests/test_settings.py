"""Settings come from the environment; a bad value stops start-up with a message naming the variable."""
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DEBUG", "SECRET_KEY")}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DEBUG", "maybe"),
        ("DATABASE_URL", "mysql://db/x"),
        ("CELERY_BROKER_URL", "amqp//nope"),
        ("JOB_HEARTBEAT_SECONDS", "soon"),
        ("MAX_UPLOAD_MB", "0"),
        ("OPENAI_BASE_URL", "ftp://example.org"),
    ],
)
def test_it_names_the_bad_variable(variable, value):
    result = manage("check", **{variable: value})
    assert result.returncode != 0
    assert f"{variable}=" in result.stderr


def test_it_requires_a_secret_key_without_debug():
    result = manage("check", DEBUG="0", ALLOWED_HOSTS="example.org")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_it_requires_a_broker_with_postgres():
    result = manage("check", DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres")
    assert result.returncode != 0
    assert "CELERY_BROKER_URL" in result.stderr


def test_it_passes_the_deploy_check_without_debug():
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING",
        DEBUG="0", SECRET_KEY=secrets.token_urlsafe(60), ALLOWED_HOSTS="example.org",
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_it_never_echoes_a_database_password():
    result = manage("check", DATABASE_URL="mysql://user:hunter2secret@db/x")
    assert result.returncode != 0
    assert "hunter2secret" not in result.stderr
