"""Steps: the durable timers and their audit, read-only; "run now" for an operator who may send."""
from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from drip.admin.base import NoDelete, SendPermission
from drip.doors.console.audit import record
from drip.doors.console.display import short, step_outcome, when_short
from drip.engine import services
from drip.models import Step


class ReasonFilter(admin.SimpleListFilter):
    """The most common reasons, so "every skip for no sms consent" is one click."""

    title = "reason"
    parameter_name = "reason"
    field = "reason"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        values = (model_admin.model._default_manager.exclude(**{self.field: ""})
                  .values_list(self.field, flat=True).distinct().order_by(self.field)[:20])
        return [(v, v if len(v) <= 50 else v[:49] + "…") for v in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class ErrorFilter(ReasonFilter):
    field = "error"


STEP_INTERNALS = ("claim_token", "enqueued_at", "started_at", "finished_at", "anchor_at", "created_at")


class StepAdmin(SendPermission, NoDelete, admin.ModelAdmin):
    list_display = ("key", "who", "due", "status", "outcome")
    list_filter = ("status", ("registration__event", admin.RelatedOnlyFieldListFilter), "funnel", "key", ReasonFilter)
    search_fields = ("registration__external_id", "registration__contact__email", "reason")
    ordering = ("-due_at", "-id")
    list_select_related = ("registration__contact", "registration__event")
    readonly_fields = [f.name for f in Step._meta.fields] + ["outcome"]
    fieldsets = [
        (None, {"fields": [*(f.name for f in Step._meta.fields if f.name not in STEP_INTERNALS and f.name != "id"), "outcome"]}),
        ("Internals", {"classes": ["collapse"], "fields": list(STEP_INTERNALS)}),
    ]
    actions = ["run_now"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Step]:
        return super().get_queryset(request).prefetch_related("messages")

    @admin.display(description="who → event")
    def who(self, step: Step) -> SafeString | str:
        registration = step.registration
        return short(f"{registration.contact.email or registration.contact.external_id} → {registration.event.title}", 28)

    @admin.display(description="due", ordering="due_at")
    def due(self, step: Step) -> SafeString | str:
        return when_short(step.due_at, step.registration.contact.timezone)

    @admin.display(description="outcome per channel")
    def outcome(self, step: Step) -> SafeString | str:
        return short(step_outcome(step), 80)

    # It sends at once what was planned for later: the `send` permission (drip.send_messages).
    @admin.action(description="Run selected pending steps now", permissions=["send"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Step]) -> None:
        open_steps = list(queryset.filter(status__in=Step.OPEN))
        count = services.run_steps_now(queryset)
        record(request, open_steps, f"Ran now via action 'run_now': {count} of {len(open_steps)} open step(s) enqueued")
        self.message_user(request, f"{count} step(s) enqueued to run now; they still re-check consent, event and expiry.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
