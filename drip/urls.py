from django.contrib import admin
from django.urls import path

from . import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/events", api.events, name="api-events"),
    # The same door with a trailing slash: APPEND_SLASH cannot redirect a POST.
    path("api/events/", api.events),
]
