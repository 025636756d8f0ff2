"""App configuration of the demo ``notes`` app."""

from django.apps import AppConfig


class NotesConfig(AppConfig):
    """The notes app; its tables are named ``notes_*``."""

    name = "conf.notes"
    label = "notes"
    default_auto_field = "django.db.models.BigAutoField"
