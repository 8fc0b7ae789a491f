"""Registrations: each with its timeline and steps; moving, cancelling and reactivating them
through the same services as the API."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.safestring import SafeString

from drip.admin.base import NoDelete
from drip.doors.console import preview, timeline
from drip.doors.console.audit import record, record_addition
from drip.doors.console.display import short, step_outcome, when, when_short
from drip.engine import services
from drip.models import Event, Registration, Step


class StepInline(NoDelete, admin.TabularInline):
    model = Step
    extra = 0
    can_delete = False
    fields = ("funnel", "key", "plan_version", "due", "status", "outcome", "attempts")
    readonly_fields = fields
    ordering = ("due_at", "id")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Step]:
        return super().get_queryset(request).select_related("registration__contact").prefetch_related("messages")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="due (contact's zone, UTC)")
    def due(self, step: Step) -> SafeString | str:
        return when(step.due_at, step.registration.contact.timezone)

    @admin.display(description="outcome per channel")
    def outcome(self, step: Step) -> str:
        return step_outcome(step)


class MoveForm(forms.Form):
    event = forms.ModelChoiceField(queryset=preview.enrollable_events(), label="Move to")


class RegistrationAdmin(NoDelete, admin.ModelAdmin):
    list_display = ("external_id", "contact_email", "event_title", "status", "attended", "created")
    list_filter = ("status", "attended", ("event", admin.RelatedOnlyFieldListFilter))
    search_fields = ("external_id", "contact__email", "event__title")
    autocomplete_fields = ("contact",)
    ordering = ("-created_at", "-id")
    list_select_related = ("contact", "event")
    inlines = [StepInline]
    actions = ["move_to_event", "cancel_registrations", "reactivate_registrations"]

    def get_readonly_fields(self, request: HttpRequest, obj: Registration | None = None) -> tuple[str, ...]:
        # Who and which event are the registration itself; its status changes through the
        # actions, which call the same services as the API.
        if obj is None:
            return ("status", "cancelled_at")
        return ("contact", "event", "status", "cancelled_at", "timeline")

    def get_fields(self, request: HttpRequest, obj: Registration | None = None) -> list[str]:  # type: ignore[override]
        fields = ["external_id", "contact", "event", "status", "attended", "cancelled_at"]
        return [*fields, "timeline"] if obj is not None else fields

    @admin.display(description="contact", ordering="contact__email")
    def contact_email(self, registration: Registration) -> SafeString | str:
        return short(registration.contact.email or registration.contact.phone or registration.contact.external_id, 30)

    @admin.display(description="event", ordering="event__starts_at")
    def event_title(self, registration: Registration) -> SafeString | str:
        return short(registration.event.title, 30)

    @admin.display(description="created (contact's zone)", ordering="created_at")
    def created(self, registration: Registration) -> SafeString | str:
        return when_short(registration.created_at, registration.contact.timezone)

    @admin.display(description="timeline")
    def timeline(self, registration: Registration) -> SafeString | str:
        return timeline.render(registration) if registration.pk else "-"

    def save_model(self, request: HttpRequest, obj: Registration, form: forms.ModelForm, change: bool) -> None:
        if not change:
            enrolled = services.enroll(obj.contact, obj.event, obj.external_id)
            obj.pk = enrolled.registration.pk
            return
        attended = obj.attended
        obj.attended = Registration.objects.values_list("attended", flat=True).get(pk=obj.pk)
        super().save_model(request, obj, form, change)
        if attended != obj.attended:
            services.set_attendance(obj, attended)

    @admin.action(description="Move to another event…", permissions=["change"])
    def move_to_event(self, request: HttpRequest, queryset: QuerySet[Registration]) -> HttpResponse | None:
        """Cancel (its pending steps stop) and enroll in the other event (its funnel starts),
        both through the services, rather than an edit that would leave no reminders."""
        form = MoveForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            target: Event = form.cleaned_data["event"]
            moved = skipped = 0
            for registration in queryset.select_related("contact", "event"):
                if registration.event_id == target.pk:
                    skipped += 1
                    continue
                cancelled = services.cancel_registration(registration)
                enrolled = services.enroll(registration.contact, target)
                record(request, [registration], (
                    f"Moved to event {target.external_id} via action 'move_to_event': cancelled with {cancelled} step(s); "
                    f"registration {enrolled.registration.external_id} {enrolled.state} there"
                ))
                record_addition(request, enrolled.registration, (
                    f"Enrolled ({enrolled.state}) via action 'move_to_event' from registration {registration.external_id}"
                ))
                moved += 1
            self.message_user(request, (
                f"Moved {moved} registration(s) to {target}: the old ones are cancelled, the new ones enrolled."
                + (f" {skipped} already in that event were left as they were." if skipped else "")
            ), messages.SUCCESS)
            return None
        return render(
            request, "admin/drip/move_registrations.html",
            {**self.admin_site.each_context(request), "registrations": queryset.select_related("contact", "event"),
             "form": form, "title": "Move registrations to another event", "opts": self.model._meta},
        )

    @admin.action(description="Cancel registrations (stops their pending steps)", permissions=["change"])
    def cancel_registrations(self, request: HttpRequest, queryset: QuerySet[Registration]) -> None:
        count = 0
        for registration in queryset.filter(status=Registration.Status.ACTIVE):
            steps = services.cancel_registration(registration)
            record(request, [registration], f"Cancelled via action 'cancel_registrations': {steps} step(s) cancelled")
            count += 1
        self.message_user(request, f"Cancelled {count} registration(s).")

    @admin.action(description="Reactivate cancelled registrations (plans what is still ahead)", permissions=["change"])
    def reactivate_registrations(self, request: HttpRequest, queryset: QuerySet[Registration]) -> None:
        planned = []
        for registration in queryset.filter(status=Registration.Status.CANCELLED).select_related("contact", "event"):
            steps = services.enroll(registration.contact, registration.event).steps_planned
            record(request, [registration], f"Reactivated via action 'reactivate_registrations': {steps} step(s) planned")
            planned.append(steps)
        self.message_user(request, f"Reactivated {len(planned)} registration(s); {sum(planned)} step(s) planned.")
