"""The demo URLs plus the test-only views under /test/."""

from django.urls import include, path

from conf.urls import urlpatterns as demo_urls
from tests.testapp import views

urlpatterns = [
    path("test/slow", views.slow),
    path("test/raise", views.raise_error),
    path("test/connection-id", views.connection_id),
    path("test/leave-transaction-open", views.leave_transaction_open),
    path("test/lock-note/<int:note_id>", views.lock_note),
    path("test/note-count", views.note_count),
    path("test/insert-then-sleep", views.insert_then_sleep),
    path("test/fk-checks-off", views.fk_checks_off),
    path("test/session-var", views.session_var),
    path("test/form", views.form_counts),
    path("test/client", views.client_info),
    path("test/echo", views.echo),
    path("test/wrong-length", views.wrong_length),
    path("", include(demo_urls)),
]
