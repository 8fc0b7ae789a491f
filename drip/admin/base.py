"""What every console page shares: who may act (Django permissions, plus `send` for anything
that reaches a provider). The record each action leaves is drip.doors.console.audit's."""
from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

# The model permission behind the console's `send` (Message Meta, migration 0015).
SEND_PERMISSION = "drip.send_messages"


def may_send(request: HttpRequest) -> bool:
    return bool(request.user.is_active and request.user.has_perm(SEND_PERMISSION))


class SendPermission:
    """`@admin.action(permissions=["send"])` reads this: run now, send again, test sends."""

    def has_send_permission(self, request: HttpRequest) -> bool:
        return may_send(request)


class NoDelete:
    """History (contacts, events, registrations, steps, messages, consent records, delivery
    reports) stays: no delete permission, so no delete button and no delete action. Removing
    a person is an erasure."""

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def require(allowed: bool) -> None:
    """A custom view's guard, before it changes anything: 403 otherwise."""
    if not allowed:
        raise PermissionDenied


def superusers_only(model_admin: type[admin.ModelAdmin]) -> type[admin.ModelAdmin]:
    """A third-party table (the beat schedule, where the dispatcher can be switched off; the
    login lockouts) is for superusers: a subclass of its own admin that says so."""
    def allowed(self: admin.ModelAdmin, request: HttpRequest, obj: object = None) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def module(self: admin.ModelAdmin, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    return type(f"SuperusersOnly{model_admin.__name__}", (model_admin,), {
        "has_module_permission": module, "has_view_permission": allowed, "has_change_permission": allowed,
        "has_delete_permission": allowed, "has_add_permission": lambda self, request, *args: module(self, request),
    })
