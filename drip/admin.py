"""The operator's console: contacts (with their consent history), events, registrations,
and the read-only audit of steps and messages."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.utils import timezone

from . import services
from .consent import has_consent, latest_record, may_lift, record_consent
from .errors import FieldError
from .fastforward import run_steps_now
from .inbound.admin import DeliveryReportInline, SuppressedFilter, consent_now
from .models import Channel, ConsentRecord, Contact, Event, Message, Registration, Step
from .rendering import format_when
from .sender import requeue_failed
from .validation import normalize_phone, validate_timezone


class ConsentInline(admin.TabularInline):
    model = ConsentRecord
    extra = 0
    can_delete = False
    fields = ("created_at", "channel", "granted", "source", "detail", "reason")
    readonly_fields = fields
    verbose_name_plural = "Consent history (newest first)"

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ContactForm(forms.ModelForm):
    email_consent = forms.BooleanField(required=False, label="Email consent")
    sms_consent = forms.BooleanField(required=False, label="SMS consent")
    consent_reason = forms.CharField(
        required=False, label="Reason for a consent change",
        help_text="Required to lift a suppression that came from the recipient (STOP, unsubscribe, bounce).",
    )

    class Meta:
        model = Contact
        fields = ["external_id", "email", "phone", "first_name", "last_name", "timezone"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["email_consent"].initial = has_consent(self.instance, Channel.EMAIL)
            self.fields["sms_consent"].initial = has_consent(self.instance, Channel.SMS)

    def clean_phone(self) -> str:
        return normalize_phone(self.cleaned_data.get("phone", ""))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.instance.pk:
            for channel in (Channel.EMAIL, Channel.SMS):
                wanted = cleaned.get(f"{channel}_consent")
                current = latest_record(self.instance, channel)
                if wanted and not may_lift(current, ConsentRecord.Source.ADMIN, cleaned.get("consent_reason", "")):
                    assert current is not None  # only a suppression refuses a grant
                    self.add_error(
                        "consent_reason",
                        f"{channel} was revoked by the recipient ({current.detail or current.source}); give a reason to lift it.",
                    )
        return cleaned


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    form = ContactForm
    list_display = ("external_id", "email", "phone", "first_name", "last_name", "timezone")
    search_fields = ("external_id", "email", "phone", "first_name", "last_name")
    list_filter = (SuppressedFilter,)
    readonly_fields = ("consent_now",)
    consent_now = staticmethod(consent_now)
    inlines = [ConsentInline]
    actions = ["enroll_in_event"]

    def save_model(self, request: HttpRequest, obj: Contact, form: ContactForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        for channel in (Channel.EMAIL, Channel.SMS):
            wanted = form.cleaned_data.get(f"{channel}_consent", False)
            if wanted != has_consent(obj, channel) and (change or wanted):
                record_consent(
                    obj, channel, wanted, ConsentRecord.Source.ADMIN,
                    detail=f"admin:{request.user.get_username()}", reason=form.cleaned_data.get("consent_reason", ""),
                )

    @admin.action(description="Enroll in event…")
    def enroll_in_event(self, request: HttpRequest, queryset: QuerySet[Contact]) -> HttpResponse | None:
        form = EnrollForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            event = form.cleaned_data["event"]
            created, existing = enroll_contacts(queryset, event)
            self.message_user(
                request, f"Enrolled {created} contact(s) in {event.title}; {existing} already registered.", messages.SUCCESS
            )
            return None
        return render(
            request, "admin/drip/enroll_in_event.html",
            {**self.admin_site.each_context(request), "contacts": queryset, "form": form,
             "title": "Enroll contacts in an event", "opts": self.model._meta},
        )


class EnrollForm(forms.Form):
    event = forms.ModelChoiceField(queryset=Event.objects.filter(status=Event.Status.SCHEDULED))


def enroll_contacts(contacts: QuerySet[Contact], event: Event) -> tuple[int, int]:
    """Through the same service as the API: a contact already registered is left as it is
    (a cancelled registration is reactivated)."""
    created = existing = 0
    for contact in contacts:
        enrolled = services.enroll(contact, event, f"admin-{event.pk}-{contact.pk}")
        if enrolled.state == "matched":
            existing += 1
        else:
            created += 1
    return created, existing


class CompleteEventForm(forms.Form):
    attended = forms.ModelMultipleChoiceField(
        queryset=Registration.objects.none(), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Everyone not ticked (and not already marked attended) follows the no-show branch.",
    )
    completed_at = forms.DateTimeField(required=False, help_text="When the event ended, in UTC; empty means now.")

    def __init__(self, event: Event, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        attended = self.fields["attended"]
        assert isinstance(attended, forms.ModelMultipleChoiceField)
        attended.queryset = event.registrations.filter(status=Registration.Status.ACTIVE).select_related("contact")

    def clean_completed_at(self) -> datetime | None:
        value = self.cleaned_data.get("completed_at")
        if value is not None and value > timezone.now() + timedelta(minutes=5):
            raise forms.ValidationError("An event cannot be completed in the future.")
        return value


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("title", "external_id", "starts_at", "local_start", "status", "completed_at")
    list_filter = ("status",)
    search_fields = ("title", "external_id")
    actions = ["complete_event", "cancel_events"]
    # Status changes go through the actions, which also start or stop the funnels.
    readonly_fields = ("local_start", "status", "completed_at")

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

    def save_model(self, request: HttpRequest, obj: Event, form: forms.ModelForm, change: bool) -> None:
        """A new start goes through the reschedule service, which re-plans the reminders."""
        new_start = obj.starts_at
        if change and "starts_at" in form.changed_data:
            obj.starts_at = Event.objects.values_list("starts_at", flat=True).get(pk=obj.pk)
        super().save_model(request, obj, form, change)
        if obj.starts_at != new_start:
            try:
                moved = services.reschedule(obj, new_start)
            except FieldError as exc:
                self.message_user(request, f"The start was not changed: {exc}", messages.ERROR)
                return
            self.message_user(request, f"{moved} reminder(s) planned for the new start.", messages.INFO)

    @admin.display(description="start in the event's time zone")
    def local_start(self, event: Event) -> str:
        try:
            validate_timezone(event.timezone)
        except ValidationError:  # a form being corrected still holds the bad value
            return "-"
        return format_when(event.starts_at, event.timezone) if event.starts_at else "-"

    @admin.action(description="Complete event and start the post-event funnel…")
    def complete_event(self, request: HttpRequest, queryset: QuerySet[Event]) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one event to complete.", messages.ERROR)
            return None
        event = queryset.get()
        form = CompleteEventForm(event, request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            attended = {r.pk for r in form.cleaned_data["attended"]}
            try:
                summary = services.complete_event(event, attended, form.cleaned_data["completed_at"])
            except FieldError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return None
            if summary.already_completed:
                self.message_user(request, f"{event.title} was already completed; nothing planned.", messages.WARNING)
                return None
            self.message_user(request, (
                f"Completed {event.title}: {summary.branches['attended']} attended, {summary.branches['no_show']} no-show, "
                f"{summary.steps_planned} post-event steps planned."
            ), messages.SUCCESS)
            return None
        return render(
            request, "admin/drip/complete_event.html",
            {**self.admin_site.each_context(request), "event": event, "form": form,
             "title": f"Complete {event.title}", "opts": self.model._meta},
        )

    @admin.action(description="Cancel selected events (stops their pending steps)")
    def cancel_events(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        count = 0
        for event in queryset.exclude(status__in=[Event.Status.CANCELLED, Event.Status.COMPLETED]):
            services.cancel_event(event)
            count += 1
        self.message_user(request, f"Cancelled {count} event(s); completed events are left as they are.")


class StepInline(admin.TabularInline):
    model = Step
    extra = 0
    can_delete = False
    fields = ("funnel", "key", "plan_version", "due_at", "status", "reason", "attempts")
    readonly_fields = fields
    ordering = ("due_at", "id")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Registration)
class RegistrationAdmin(admin.ModelAdmin):
    list_display = ("external_id", "contact", "event", "status", "attended", "created_at")
    list_filter = ("status", "attended")
    search_fields = ("external_id", "contact__email", "event__title")
    autocomplete_fields = ("contact",)
    inlines = [StepInline]
    actions = ["cancel_registrations", "reactivate_registrations"]

    def get_readonly_fields(self, request: HttpRequest, obj: Registration | None = None) -> tuple[str, ...]:
        # Who and which event are the registration itself; its status changes through the
        # actions, which call the same services as the API.
        return ("contact", "event", "status", "cancelled_at") if obj is not None else ("status", "cancelled_at")

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

    @admin.action(description="Cancel selected registrations (stops their pending steps)")
    def cancel_registrations(self, request: HttpRequest, queryset: QuerySet[Registration]) -> None:
        count = 0
        for registration in queryset.filter(status=Registration.Status.ACTIVE):
            services.cancel_registration(registration)
            count += 1
        self.message_user(request, f"Cancelled {count} registration(s).")

    @admin.action(description="Reactivate selected cancelled registrations (plans the reminders still ahead)")
    def reactivate_registrations(self, request: HttpRequest, queryset: QuerySet[Registration]) -> None:
        planned = [services.enroll(r.contact, r.event).steps_planned for r in queryset.filter(status=Registration.Status.CANCELLED)]
        self.message_user(request, f"Reactivated {len(planned)} registration(s); {sum(planned)} step(s) planned.")


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    list_display = ("id", "registration", "funnel", "key", "plan_version", "due_at", "status", "reason")
    list_filter = ("status", "funnel", "key")
    search_fields = ("registration__external_id", "registration__contact__email")
    readonly_fields = [f.name for f in Step._meta.fields]
    actions = ["run_now"]

    @admin.action(description="Run selected pending steps now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[Step]) -> None:
        count = run_steps_now(queryset)
        self.message_user(request, f"{count} step(s) enqueued to run now; they still re-check consent, event and expiry.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "contact", "template_type", "channel", "status", "attempts", "sent_at", "error")
    list_filter = ("status", "channel", "template_type")
    search_fields = ("contact__email", "contact__phone", "provider_message_id")
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [DeliveryReportInline]
    actions = ["send_again"]

    @admin.action(description="Send failed messages again")
    def send_again(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        count = requeue_failed(queryset)
        self.message_user(request, f"Re-queued {count} failed message(s); others were left as they were.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
