"""Django's admin log as a list: who did what to which object, and when. Read-only and for
superusers: the trail of every console action (the history page of each object shows its own)."""
from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.models import DELETION, LogEntry
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString


class LogEntryAdmin(admin.ModelAdmin):
    list_display = ("action_time", "user", "content_type", "object_link", "action_flag", "change_message")
    list_filter = ("action_flag", "content_type", ("user", admin.RelatedOnlyFieldListFilter), "action_time")
    search_fields = ("object_repr", "change_message", "user__username")
    date_hierarchy = "action_time"
    list_select_related = ("user", "content_type")
    readonly_fields = ("action_time", "user", "content_type", "object_id", "object_repr", "action_flag",
                       "change_message")
    fields = readonly_fields
    ordering = ("-action_time", "-id")

    def _superuser(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._superuser(request)

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return self._superuser(request)

    # The trail is written by the console's actions only: nobody edits or deletes it here.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="object", ordering="object_repr")
    def object_link(self, entry: LogEntry) -> SafeString | str:
        url = entry.get_admin_url() if entry.action_flag != DELETION else ""  # a deleted object has no page
        return format_html('<a href="{}">{}</a>', url, entry.object_repr) if url else entry.object_repr
