"""Settings of the bundled demo project.

The database comes from ``DATABASE_URL`` (the dj-database-url convention):

* unset: an SQLite file in ``var/``, so the demo runs with nothing installed;
* ``mysql://user:pass@host:port/name``: the pooled ``djpool.backends.mysql``
  engine, one persistent connection per worker process.
  ``DATABASE_POOL=0`` selects Django's own MySQL backend instead (for
  comparisons), with ``DATABASE_CONN_MAX_AGE`` seconds of persistence
  (default 0, Django's default).

Other environment variables: ``DJANGO_DEBUG`` (``1`` to enable),
``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS`` (comma-separated),
``DJANGO_STATIC_ROOT``. Every one is listed in README.md (Configuration of the demo project).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_flag(name: str, default: bool) -> bool:
    """Read a boolean environment variable, refusing values that are not one."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def database_from_url(url: str | None) -> dict[str, Any]:
    """``DATABASES["default"]`` for a ``DATABASE_URL`` (None: the demo SQLite file)."""
    if not url:
        (BASE_DIR / "var").mkdir(exist_ok=True)
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(BASE_DIR / "var" / "demo.sqlite3")}
    config: dict[str, Any] = dict(dj_database_url.parse(url))
    if config["ENGINE"] == "django.db.backends.mysql":
        if env_flag("DATABASE_POOL", True):
            config["ENGINE"] = "djpool.backends.mysql"
            config.setdefault("OPTIONS", {})["pool"] = True
            config["CONN_MAX_AGE"] = 0
        else:
            raw_age = os.environ.get("DATABASE_CONN_MAX_AGE", "0")
            config["CONN_MAX_AGE"] = None if raw_age.lower() == "none" else int(raw_age)
    return config


DEBUG = env_flag("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "demo-only-insecure-key-set-DJANGO_SECRET_KEY"
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "conf.notes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "conf.urls"
WSGI_APPLICATION = "conf.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or str(BASE_DIR / "var" / "static")
