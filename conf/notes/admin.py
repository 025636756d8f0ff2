"""Notes in the Django admin."""

from django.contrib import admin

from .models import Note


@admin.register(Note)
class NoteAdmin(admin.ModelAdmin):
    """List, search and edit notes."""

    list_display = ("id", "text", "created")
    search_fields = ("text",)
