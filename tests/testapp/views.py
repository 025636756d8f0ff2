"""Test-only views. Each one does one thing a real application might do wrong."""

from __future__ import annotations

import time

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from conf.notes.models import Note


def slow(request: HttpRequest) -> JsonResponse:
    """Sleep ``?s=`` seconds on the Django thread (default 1), then answer."""
    seconds = float(request.GET.get("s", "1"))
    time.sleep(seconds)
    return JsonResponse({"slept": seconds})


def raise_error(request: HttpRequest) -> JsonResponse:
    """A view with a bug: Django turns it into a 500."""
    raise ValueError("a bug in a view, on purpose")


def connection_id(request: HttpRequest) -> JsonResponse:
    """The server-side id of the connection this request uses."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (cid,) = cursor.fetchone()
    return JsonResponse({"connection_id": cid})


def leave_transaction_open(request: HttpRequest) -> JsonResponse:
    """Insert a note with autocommit off and return without committing."""
    transaction.set_autocommit(False)
    note = Note.objects.create(text=request.GET.get("text", "uncommitted"))
    return JsonResponse({"id": note.id})


def lock_note(request: HttpRequest, note_id: int) -> JsonResponse:
    """Take a row lock (SELECT ... FOR UPDATE) in a transaction left open."""
    transaction.set_autocommit(False)
    note = Note.objects.select_for_update().get(pk=note_id)
    return JsonResponse({"locked": note.id})


def note_count(request: HttpRequest) -> JsonResponse:
    """How many notes have a given text (``?text=``)."""
    return JsonResponse({"count": Note.objects.filter(text=request.GET.get("text", "")).count()})


def insert_then_sleep(request: HttpRequest) -> JsonResponse:
    """Inside one transaction: insert, sleep ``?s=`` seconds, insert again."""
    text = request.GET.get("text", "txn")
    with transaction.atomic():
        Note.objects.create(text=text)
        time.sleep(float(request.GET.get("s", "1")))
        Note.objects.create(text=text)
    return JsonResponse({"ok": True})


def fk_checks_off(request: HttpRequest) -> JsonResponse:
    """Disable foreign key checks and forget to turn them back on."""
    connection.disable_constraint_checking()
    return JsonResponse({"foreign_key_checks": 0})


def session_var(request: HttpRequest) -> JsonResponse:
    """Read (and with ``?set=``, change) a session variable with raw SQL."""
    with connection.cursor() as cursor:
        if "set" in request.GET:
            cursor.execute("SET @djpool_test = %s", [request.GET["set"]])
        cursor.execute("SELECT @djpool_test, @@foreign_key_checks, CONNECTION_ID()")
        value, fk, cid = cursor.fetchone()
    return JsonResponse({"value": value, "foreign_key_checks": fk, "connection_id": cid})


@csrf_exempt
def form_counts(request: HttpRequest) -> JsonResponse:
    """How many form fields and ``upload`` files Django parsed from the request body."""
    return JsonResponse({"fields": len(request.POST), "files": len(request.FILES.getlist("upload"))})


def client_info(request: HttpRequest) -> JsonResponse:
    """The client address and scheme as Django sees them (after the server's --xheaders handling)."""
    return JsonResponse({"remote_addr": request.META["REMOTE_ADDR"], "is_secure": request.is_secure()})


@csrf_exempt
def echo(request: HttpRequest) -> JsonResponse:
    """What Django received: method, body (length and text) and the request's HTTP_* headers."""
    headers = {k: v for k, v in request.META.items() if k.startswith("HTTP_")}
    body = request.body
    return JsonResponse(
        {"method": request.method, "length": len(body), "body": body.decode(), "headers": headers}
    )


def wrong_length(request: HttpRequest) -> HttpResponse:
    """A response whose Content-Length does not match its body (an application bug)."""
    response = HttpResponse(b"twelve bytes")
    response["Content-Length"] = "100"
    return response
