"""The demo project's settings plus test-only views (slow, failing, transaction-leaving)."""

from conf.settings import *  # noqa: F403
from conf.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
ROOT_URLCONF = "tests.urls"
WSGI_APPLICATION = "tests.wsgi.application"

# Above Django's defaults (1,000 / 100) and above what Tornado's own form parser allows,
# so the tests can show large forms reach Django untouched (tests/test_production.py).
DATA_UPLOAD_MAX_NUMBER_FIELDS = 2000
DATA_UPLOAD_MAX_NUMBER_FILES = 200
