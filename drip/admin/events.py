"""Events: their funnel at a glance, times in the event's own zone, completing one (inline, or
as a console job for a large one) and cancelling."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from drip.admin.base import NoDelete
from drip.delivery.rendering import format_when
from drip.domain.validation import validate_timezone
from drip.doors.console import funnel, jobs
from drip.doors.console.audit import record
from drip.doors.console.display import when_short
from drip.engine import services
from drip.models import Event, Registration
from drip.support.errors import FieldError


class CompleteEventForm(forms.Form):
    attended = forms.ModelMultipleChoiceField(
        queryset=Registration.objects.none(), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Everyone not ticked (and not already marked attended) follows the no-show branch.",
    )
    completed_at = forms.DateTimeField(required=False, help_text="When the event ended, in UTC; empty means now.")
    ended_early = forms.BooleanField(
        required=False, label="Yes, it ended before its scheduled start",
        help_text="Its scheduled start is still ahead: completing now cancels its reminders and thanks people for coming.",
    )

    def __init__(self, event: Event, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if event.starts_at <= timezone.now():
            del self.fields["ended_early"]
        attended = self.fields["attended"]
        assert isinstance(attended, forms.ModelMultipleChoiceField)
        attended.queryset = event.registrations.filter(status=Registration.Status.ACTIVE).select_related("contact")

    def clean_completed_at(self) -> datetime | None:
        value = self.cleaned_data.get("completed_at")
        if value is not None and value > timezone.now() + timedelta(minutes=5):
            raise forms.ValidationError("An event cannot be completed in the future.")
        return value


class EventAdmin(NoDelete, admin.ModelAdmin):
    list_display = ("title", "external_id", "start_utc", "local_start", "status", "completed")
    list_filter = ("status",)
    search_fields = ("title", "external_id")
    actions = ["complete_event", "cancel_events"]
    # Status changes go through the actions, which also start or stop the funnels.
    readonly_fields = ("local_start", "status", "completed_at", "funnel_overview")

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict | None = None) -> HttpResponse:
        # Times on the event's page are shown and typed in the event's own zone (the one
        # submitted with the form, when the operator changes it too), as its audience sees them.
        with timezone.override(self._zone(request, object_id)):
            response = super().changeform_view(request, object_id, form_url, extra_context)
            if isinstance(response, TemplateResponse):
                response.render()  # here, inside the zone; a TemplateResponse renders late
            return response

    @staticmethod
    def _zone(request: HttpRequest, object_id: str | None) -> ZoneInfo:
        name = request.POST.get("timezone") if request.method == "POST" else None
        if not name and object_id and object_id.isdigit():
            name = Event.objects.filter(pk=object_id).values_list("timezone", flat=True).first()
        try:
            validate_timezone(name or "UTC")
        except ValidationError:  # the form says so, on the timezone field
            return ZoneInfo("UTC")
        return ZoneInfo(name or "UTC")

    def get_form(self, request: HttpRequest, obj: Event | None = None, change: bool = False, **kwargs: object) -> type:
        form = super().get_form(request, obj, change, **kwargs)
        if "starts_at" in form.base_fields:
            form.base_fields["starts_at"].help_text = "In the event's time zone (its time zone field)."
        return form

    def get_readonly_fields(self, request: HttpRequest, obj: Event | None = None) -> tuple[str, ...]:
        """A completed or cancelled event keeps its start: the form does not offer to move it
        (the reschedule service would refuse, after the form had said "changed")."""
        fixed = ("starts_at",) if obj is not None and obj.status != Event.Status.SCHEDULED else ()
        return (*super().get_readonly_fields(request, obj), *fixed)

    def save_model(self, request: HttpRequest, obj: Event, form: forms.ModelForm, change: bool) -> None:
        """A new start goes through the reschedule service, which re-plans the reminders."""
        new_start = obj.starts_at
        if change and "starts_at" in form.changed_data:
            obj.starts_at = Event.objects.values_list("starts_at", flat=True).get(pk=obj.pk)
        super().save_model(request, obj, form, change)
        if obj.starts_at != new_start:
            try:
                done = services.reschedule(obj, new_start)
            except FieldError as exc:
                self.message_user(request, f"The start was not changed: {exc}", messages.ERROR)
                return
            self.message_user(request, (
                f"{done.reminders_moved} reminder(s) moved to the new start; "
                f"{done.notices_queued} “new time” email(s) queued."
            ), messages.INFO)

    @admin.display(description="start (UTC)", ordering="starts_at")
    def start_utc(self, event: Event) -> str:
        return f"{event.starts_at:%Y-%m-%d %H:%M} UTC"

    @admin.display(description="completed", ordering="completed_at")
    def completed(self, event: Event) -> SafeString | str:
        return when_short(event.completed_at, event.timezone)

    @admin.display(description="funnel")
    def funnel_overview(self, event: Event) -> SafeString | str:
        return funnel.render(event) if event.pk else "-"

    @admin.display(description="start in the event's time zone")
    def local_start(self, event: Event) -> str:
        try:
            validate_timezone(event.timezone)
        except ValidationError:  # a form being corrected still holds the bad value
            return "-"
        return format_when(event.starts_at, event.timezone) if event.starts_at else "-"

    @admin.action(description="Complete event and start the post-event funnel…", permissions=["change"])
    def complete_event(self, request: HttpRequest, queryset: QuerySet[Event]) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one event to complete.", messages.ERROR)
            return None
        event = queryset.get()
        form = CompleteEventForm(event, request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            attended = {r.pk for r in form.cleaned_data["attended"]}
            force = bool(form.cleaned_data.get("ended_early"))
            registrations = event.registrations.filter(status=Registration.Status.ACTIVE).count()
            if event.status == Event.Status.SCHEDULED and registrations > settings.DRIP_COMPLETE_INLINE_REGISTRATIONS:
                return self.complete_in_background(request, event, attended, form.cleaned_data["completed_at"], force,
                                                   registrations)
            try:
                summary = services.complete_event(event, attended, form.cleaned_data["completed_at"], force=force)
            except FieldError as exc:
                hint = " Tick “Yes, it ended before its scheduled start” to complete it anyway." if exc.field == "completedAt" else ""
                self.message_user(request, f"Not completed: {exc}.{hint}", messages.ERROR)
                return None
            if summary.already_completed:
                self.message_user(request, f"{event.title} was already completed; nothing planned.", messages.WARNING)
                return None
            done = (f"{summary.branches['attended']} attended, {summary.branches['no_show']} no-show, "
                    f"{summary.steps_planned} post-event steps planned")
            record(request, [event], f"Completed event via action 'complete_event': {done}")
            self.message_user(request, f"Completed {event.title}: {done}.", messages.SUCCESS)
            return None
        return render(
            request, "admin/drip/complete_event.html",
            {**self.admin_site.each_context(request), "event": event, "form": form,
             "title": f"Complete {event.title}", "opts": self.model._meta,
             "starts_in_future": "ended_early" in form.fields, "local_start": self.local_start(event)},
        )

    def complete_in_background(self, request: HttpRequest, event: Event, attended: set[int],
                               completed_at: datetime | None, force: bool, total: int) -> HttpResponse | None:
        """A large event completes in a task (drip.doors.console.jobs) and the operator watches its
        progress page; a completion the service would refuse is refused here, at once."""
        completed_at = completed_at or timezone.now()
        try:
            services.check_completable(event, completed_at, force)
        except FieldError as exc:
            hint = " Tick “Yes, it ended before its scheduled start” to complete it anyway." if exc.field == "completedAt" else ""
            self.message_user(request, f"Not completed: {exc}.{hint}", messages.ERROR)
            return None
        job = jobs.start_completion(event, attended, completed_at, force, total, request.user.pk)
        record(request, [event], f"Completion of {total} registration(s) started via action 'complete_event' "
                                 f"as console job {job.pk}")
        return HttpResponseRedirect(reverse("admin:drip_consolejob_progress", args=[job.pk]))

    @admin.action(description="Cancel selected events (stops their pending steps)", permissions=["change"])
    def cancel_events(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        count = 0
        for event in queryset.exclude(status__in=[Event.Status.CANCELLED, Event.Status.COMPLETED]):
            steps = services.cancel_event(event)
            record(request, [event], f"Cancelled event via action 'cancel_events': {steps} step(s) cancelled")
            count += 1
        self.message_user(request, f"Cancelled {count} event(s); completed events are left as they are.")
