"""Django-level tests of the demo app (``python manage.py test conf.notes``).

They run with whatever database ``DATABASE_URL`` names, so they also show that
Django's test runner (test database creation and teardown, transactions
rolled back per test, ``on_commit`` capture) works on djpool.
"""

from __future__ import annotations

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from .models import Note


class NotesApiTests(TestCase):
    """The JSON API, through Django's test client."""

    def test_create_then_read(self) -> None:
        created = self.client.post("/api/notes", {"text": "hello"}, content_type="application/json")
        self.assertEqual(created.status_code, 201)
        note_id = created.json()["id"]
        fetched = self.client.get(f"/api/notes/{note_id}")
        self.assertEqual(fetched.json()["text"], "hello")

    def test_absent_note_is_404_json(self) -> None:
        response = self.client.get("/api/notes/123456")
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.json()["error"], "note not found")

    def test_text_over_the_column_length_is_refused(self) -> None:
        response = self.client.post("/api/notes", {"text": "x" * 281}, content_type="application/json")
        self.assertEqual(response.status_code, 400)
        self.assertEqual(Note.objects.count(), 0)

    def test_on_commit_hooks_run_after_commit(self) -> None:
        ran: list[str] = []
        with self.captureOnCommitCallbacks(execute=True):
            with transaction.atomic():
                Note.objects.create(text="hooked")
                transaction.on_commit(lambda: ran.append("committed"))
        self.assertEqual(ran, ["committed"])


class ConnectionLifecycleTests(TransactionTestCase):
    """close(), savepoints and rollbacks behave as with Django's own backend."""

    def test_close_then_query_reconnects(self) -> None:
        Note.objects.create(text="before close")
        connection.close()
        self.assertIsNone(connection.connection)
        self.assertEqual(Note.objects.filter(text="before close").count(), 1)

    def test_savepoint_rollback_keeps_the_outer_transaction(self) -> None:
        with transaction.atomic():
            Note.objects.create(text="outer")
            try:
                with transaction.atomic():
                    Note.objects.create(text="inner")
                    raise RuntimeError("roll back the savepoint")
            except RuntimeError:
                pass
        self.assertEqual(sorted(Note.objects.values_list("text", flat=True)), ["outer"])

    def test_failed_transaction_is_rolled_back(self) -> None:
        try:
            with transaction.atomic():
                Note.objects.create(text="doomed")
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        self.assertFalse(Note.objects.filter(text="doomed").exists())
