"""The Django project hosted by the server: settings, URLs and the demo ``notes`` app."""
