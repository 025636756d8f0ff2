"""The WSGI application (``WSGI_APPLICATION``); server.py and gunicorn both load it."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conf.settings")
application = get_wsgi_application()
