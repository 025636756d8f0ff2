"""The demo WSGI application, wrapped so a test can make an exception escape it."""

from collections.abc import Callable, Iterable
from typing import Any

from conf.wsgi import application as django_application


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Raise for /test/wsgi-crash (outside Django's own error handling), else Django."""
    if environ["PATH_INFO"] == "/test/wsgi-crash":
        raise RuntimeError("crash outside Django, on purpose")
    return django_application(environ, start_response)
