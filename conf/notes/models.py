"""The one model of the demo app."""

from django.db import models

TEXT_MAX_LENGTH = 280


class Note(models.Model):
    """A short text with its creation time."""

    text = models.CharField(max_length=TEXT_MAX_LENGTH)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.text[:40]

    def as_json(self) -> dict[str, object]:
        """The API representation."""
        return {"id": self.id, "text": self.text, "created": self.created.isoformat()}
