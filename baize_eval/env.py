"""Typed reads of environment variables that fail at start with a message naming the variable."""
import os
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def text(name, default=""):
    return os.environ.get(name, default).strip()


def flag(name, default=False):
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off.")


def integer(name, default, minimum=None):
    return _numeric(name, default, minimum, int, "a whole number")


def number(name, default, minimum=None):
    return _numeric(name, default, minimum, float, "a number")


def _numeric(name, default, minimum, parse, kind):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not {kind}.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}.")
    return value


def url(name, schemes, default=""):
    raw = text(name, default)
    if not raw:
        return ""
    parsed = urlparse(raw)
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
        raise ImproperlyConfigured(
            f"{name}={_redact(raw)!r} is not a valid URL: expected a scheme among {', '.join(sorted(schemes))}."
        )
    return raw


def listing(name, default=()):
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def _redact(raw):
    """Never echo a password embedded in a URL."""
    parsed = urlparse(raw)
    if parsed.password:
        return raw.replace(parsed.password, "***")
    return raw
