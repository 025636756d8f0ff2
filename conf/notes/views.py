"""Views of the demo app: an HTML page and a JSON API.

The API is for programs, not browsers: it takes JSON bodies, answers JSON
(errors included, naming the problem) and is exempt from CSRF, which protects
cookie-authenticated form posts like the one on the HTML page.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .models import TEXT_MAX_LENGTH, Note


class NoteForm(forms.ModelForm):
    """The add-a-note form of the HTML page."""

    class Meta:
        model = Note
        fields = ["text"]


@require_http_methods(["GET", "HEAD", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    """List the latest notes, and add one from the CSRF-protected form."""
    form = NoteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        form.save()
        return redirect("index")
    notes = Note.objects.all()[:20]
    return render(
        request, "notes/index.html", {"notes": notes, "form": form}, status=400 if form.errors else 200
    )


def error(status: int, message: str, **extra: Any) -> JsonResponse:
    """A JSON error body: {"error": message, ...}."""
    return JsonResponse({"error": message, **extra}, status=status)


@require_http_methods(["GET", "HEAD"])
def api_note(request: HttpRequest, note_id: int) -> JsonResponse:
    """One note by primary key: a single indexed read."""
    note = Note.objects.filter(pk=note_id).first()
    if note is None:
        return error(404, "note not found", id=note_id)
    return JsonResponse(note.as_json())


@csrf_exempt
def api_notes(request: HttpRequest) -> JsonResponse:
    """``POST {"text": "..."}`` creates a note: 201 with its id, or 400 naming the problem."""
    if request.method != "POST":
        response = error(405, "method not allowed; POST a JSON object", allowed=["POST"])
        response["Allow"] = "POST"
        return response
    try:
        payload = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, f"body is not valid JSON: {exc}")
    if not isinstance(payload, dict):
        return error(400, 'body must be a JSON object like {"text": "..."}')
    text = payload.get("text")
    if text is None:
        return error(400, "missing field: text")
    if not isinstance(text, str):
        return error(400, "text must be a string")
    if not text.strip():
        return error(400, "text must not be empty")
    if len(text) > TEXT_MAX_LENGTH:
        return error(400, f"text is longer than {TEXT_MAX_LENGTH} characters", length=len(text))
    note = Note.objects.create(text=text)
    return JsonResponse(note.as_json(), status=201)
