"""The demo app: short notes, an HTML page and a small JSON API."""
