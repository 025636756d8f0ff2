"""The demo project's settings plus test-only views (slow, failing, transaction-leaving)."""

from conf.settings import *  # noqa: F401,F403
from conf.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
ROOT_URLCONF = "tests.urls"
WSGI_APPLICATION = "tests.wsgi.application"
