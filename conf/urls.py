"""URLs of the demo project: the notes app, the admin, static files when DEBUG."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

from conf.notes import views

urlpatterns = [
    path("", views.index, name="index"),
    path("api/notes", views.api_notes, name="api-notes"),
    path("api/notes/<int:note_id>", views.api_note, name="api-note"),
    path("admin/", admin.site.urls),
    *staticfiles_urlpatterns(),  # empty unless DEBUG: in production nginx serves /static/
]
