"""The console's own AdminSite: its header, and an index that leads with what needs
attention. Every model is registered on it in drip/admin/__init__.py; Django's default
`admin.site` is not mounted, so nothing a third-party app registers there is reachable."""
from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from drip.doors.console import attention


class DripAdminSite(admin.AdminSite):
    site_header = "Drip"
    site_title = "Drip"
    index_title = "Drip console"
    # Drip has no public site: "View site" would open a 404 (a debug page under DEBUG).
    site_url = None

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> TemplateResponse:
        """What needs attention first (templates/admin/index.html), for those who may read
        the messages and steps it counts."""
        context = dict(extra_context or {})
        if request.user.has_perms(["drip.view_message", "drip.view_step"]):
            context["attention"] = attention.needs_attention()
        return super().index(request, context)


# The name "admin" keeps every URL name the console had (admin:drip_contact_changelist...).
site = DripAdminSite(name="admin")
