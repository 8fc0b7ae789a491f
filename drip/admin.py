"""The operator's console: contacts (with their consent history), events, registrations,
and the read-only audit of steps and messages."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import django_celery_beat.admin  # noqa: F401  (registers the beat tables, hidden below)
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from . import services
from .consent import has_consent, latest_record, may_lift, record_consent
from .console import attention, csv_import, funnel, jobs, preview, timeline
from .console.display import short, step_outcome, when, when_short
from .errors import FieldError
from .fastforward import run_steps_now
from .inbound.admin import DeliveryReportInline, SuppressedFilter, consent_now
from .models import Channel, ConsentRecord, ConsoleJob, Contact, Event, Message, Registration, Step
from .rendering import format_when
from .sender import requeue_failed
from .validation import normalize_phone, validate_timezone

admin.site.site_header = "Drip"
admin.site.site_title = "Drip"
admin.site.index_title = "Drip console"
# Drip has no public site: "View site" would open a 404 (a debug page under DEBUG).
admin.site.site_url = None
_plain_index = admin.site.index


def index(request: HttpRequest, extra_context: dict | None = None) -> TemplateResponse:
    """The index leads with what needs attention (templates/admin/index.html)."""
    return _plain_index(request, {"attention": attention.needs_attention(), **(extra_context or {})})


admin.site.index = index  # type: ignore[method-assign]


def superusers_only(model_admin: type[admin.ModelAdmin]) -> type[admin.ModelAdmin]:
    """The beat schedule (where the dispatcher can be switched off) is for superusers."""
    def allowed(self: admin.ModelAdmin, request: HttpRequest, obj: object = None) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def module(self: admin.ModelAdmin, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    return type(f"SuperusersOnly{model_admin.__name__}", (model_admin,), {
        "has_module_permission": module, "has_view_permission": allowed, "has_change_permission": allowed,
        "has_delete_permission": allowed, "has_add_permission": lambda self, request: module(self, request),
    })


for _model, _model_admin in list(admin.site._registry.items()):
    if _model._meta.app_label == "django_celery_beat":
        admin.site.unregister(_model)
        admin.site.register(_model, superusers_only(type(_model_admin)))


class NoDelete:
    """Audit rows (steps, messages, consent records, delivery reports) stay: no delete
    permission, so no delete button and no delete action either."""

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ConsentInline(NoDelete, admin.TabularInline):
    model = ConsentRecord
    extra = 0
    can_delete = False
    fields = ("recorded", "channel", "granted", "source", "detail", "reason")
    readonly_fields = fields
    verbose_name_plural = "Consent history (newest first)"

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[ConsentRecord]:
        return super().get_queryset(request).select_related("contact")

    @admin.display(description="when")
    def recorded(self, record: ConsentRecord) -> SafeString | str:
        return when(record.created_at, record.contact.timezone)


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
        self.warn_about_twins(request, obj)
        for channel in (Channel.EMAIL, Channel.SMS):
            wanted = form.cleaned_data.get(f"{channel}_consent", False)
            if wanted != has_consent(obj, channel) and (change or wanted):
                record_consent(
                    obj, channel, wanted, ConsentRecord.Source.ADMIN,
                    detail=f"admin:{request.user.get_username()}", reason=form.cleaned_data.get("consent_reason", ""),
                )

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.import_view)
        return [path("import/", view, name="drip_contact_import"), *super().get_urls()]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Upload → a preview listing every row's error (nothing written) → one atomic import."""
        if not (self.has_add_permission(request) and self.has_change_permission(request)):
            raise PermissionDenied
        form = ImportForm(request.POST or None, request.FILES or None)
        checked = None
        if request.method == "POST" and form.is_valid():
            event: Event = form.cleaned_data["event"]
            text = form.cleaned_data["csv_text"]
            checked = csv_import.plan(text, event)
            if "confirm" in request.POST and checked.ok and len(checked.rows) > settings.DRIP_IMPORT_INLINE_ROWS:
                job = jobs.start_import(event, csv_import.items_of(checked), request.user.pk)
                return HttpResponseRedirect(reverse("admin:drip_consolejob_progress", args=[job.pk]))
            if "confirm" in request.POST and checked.ok:
                counts = csv_import.import_rows(checked)
                summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                self.message_user(request, f"Imported {len(checked.rows)} row(s) into {event}: {summary}.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:drip_registration_changelist") + f"?event__id__exact={event.pk}")
            form = ImportForm(initial={"event": event.pk, "csv_text": text})
        return TemplateResponse(request, "admin/drip/csv_import.html", {
            **self.admin_site.each_context(request), "form": form, "checked": checked, "columns": csv_import.COLUMNS,
            "title": "Import contacts from CSV into an event", "opts": self.model._meta,
        })

    def warn_about_twins(self, request: HttpRequest, contact: Contact) -> None:
        """Two rows for one person get two welcomes: say so (a suppression covers the address)."""
        same = Q(pk__in=[])
        if contact.email:
            same |= Q(email__iexact=contact.email)
        if contact.phone:
            same |= Q(phone=contact.phone)
        twins = list(Contact.objects.filter(same).exclude(pk=contact.pk).values_list("external_id", flat=True)[:5])
        if twins:
            self.message_user(request, (
                f"Another contact already has this email or phone ({', '.join(twins)}): one person may get every "
                "message twice. Merge them or correct the address."
            ), messages.WARNING)

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


class ImportForm(forms.Form):
    event = forms.ModelChoiceField(queryset=preview.enrollable_events())
    file = forms.FileField(required=False, label="CSV file", help_text="UTF-8, a header row; at most 5000 rows.")
    csv_text = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        upload = cleaned.get("file")
        if upload is not None:
            try:
                cleaned["csv_text"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                self.add_error("file", "The file is not UTF-8 text.")
        elif not cleaned.get("csv_text"):
            self.add_error("file", "Choose a CSV file.")
        return cleaned


class EnrollForm(forms.Form):
    event = forms.ModelChoiceField(queryset=preview.enrollable_events())


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


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
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

    @admin.action(description="Complete event and start the post-event funnel…")
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
            self.message_user(request, (
                f"Completed {event.title}: {summary.branches['attended']} attended, {summary.branches['no_show']} no-show, "
                f"{summary.steps_planned} post-event steps planned."
            ), messages.SUCCESS)
            return None
        return render(
            request, "admin/drip/complete_event.html",
            {**self.admin_site.each_context(request), "event": event, "form": form,
             "title": f"Complete {event.title}", "opts": self.model._meta,
             "starts_in_future": "ended_early" in form.fields, "local_start": self.local_start(event)},
        )

    def complete_in_background(self, request: HttpRequest, event: Event, attended: set[int],
                               completed_at: datetime | None, force: bool, total: int) -> HttpResponse | None:
        """A large event completes in a task (drip.console.jobs) and the operator watches its
        progress page; a completion the service would refuse is refused here, at once."""
        completed_at = completed_at or timezone.now()
        try:
            services.check_completable(event, completed_at, force)
        except FieldError as exc:
            hint = " Tick “Yes, it ended before its scheduled start” to complete it anyway." if exc.field == "completedAt" else ""
            self.message_user(request, f"Not completed: {exc}.{hint}", messages.ERROR)
            return None
        job = jobs.start_completion(event, attended, completed_at, force, total, request.user.pk)
        return HttpResponseRedirect(reverse("admin:drip_consolejob_progress", args=[job.pk]))

    @admin.action(description="Cancel selected events (stops their pending steps)")
    def cancel_events(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        count = 0
        for event in queryset.exclude(status__in=[Event.Status.CANCELLED, Event.Status.COMPLETED]):
            services.cancel_event(event)
            count += 1
        self.message_user(request, f"Cancelled {count} event(s); completed events are left as they are.")


@admin.register(ConsoleJob)
class ConsoleJobAdmin(NoDelete, admin.ModelAdmin):
    """Large CSV imports and completions, run by a task; each has a progress page."""

    list_display = ("id", "kind", "event", "status", "progress_shown", "created_by", "created_at", "finished_at")
    list_filter = ("kind", "status")
    list_select_related = ("event", "created_by")
    readonly_fields = ("kind", "event", "created_by", "status", "total", "done", "result", "error", "attempts",
                       "created_at", "started_at", "finished_at")
    exclude = ("payload", "claim_token")

    @admin.display(description="progress")
    def progress_shown(self, job: ConsoleJob) -> SafeString:
        url = reverse("admin:drip_consolejob_progress", args=[job.pk])
        return format_html('<a href="{}">{} / {}</a>', url, jobs.progress(job), job.total)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.progress_view)
        return [path("<int:pk>/progress/", view, name="drip_consolejob_progress"), *super().get_urls()]

    def progress_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Server-rendered; reloads itself (a meta refresh) until the job has finished."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        job = ConsoleJob.objects.select_related("event", "created_by").filter(pk=pk).first()
        if job is None:
            raise Http404(f"no console job {pk}")
        if request.method == "POST" and "retry" in request.POST and jobs.stalled(job):
            jobs.retry(job)
            self.message_user(request, "Published the job again; it runs if no worker holds it.", messages.INFO)
            return HttpResponseRedirect(request.path)
        done = jobs.progress(job)
        return TemplateResponse(request, "admin/drip/job_progress.html", {
            **self.admin_site.each_context(request), "job": job, "done": done,
            "percent": 100 * done // job.total if job.total else (100 if job.finished else 0),
            "stalled": jobs.stalled(job), "next_url": self._next_url(job),
            "title": f"{job.get_kind_display()}: {job.event.title}", "opts": self.model._meta,
        })

    @staticmethod
    def _next_url(job: ConsoleJob) -> str:
        if job.kind == ConsoleJob.Kind.IMPORT:
            return reverse("admin:drip_registration_changelist") + f"?event__id__exact={job.event_id}"
        return reverse("admin:drip_event_change", args=[job.event_id])


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


@admin.register(Registration)
class RegistrationAdmin(admin.ModelAdmin):
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

    @admin.action(description="Move to another event…")
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
                services.cancel_registration(registration)
                services.enroll(registration.contact, target)
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

    @admin.action(description="Cancel registrations (stops their pending steps)")
    def cancel_registrations(self, request: HttpRequest, queryset: QuerySet[Registration]) -> None:
        count = 0
        for registration in queryset.filter(status=Registration.Status.ACTIVE):
            services.cancel_registration(registration)
            count += 1
        self.message_user(request, f"Cancelled {count} registration(s).")

    @admin.action(description="Reactivate cancelled registrations (plans what is still ahead)")
    def reactivate_registrations(self, request: HttpRequest, queryset: QuerySet[Registration]) -> None:
        planned = [services.enroll(r.contact, r.event).steps_planned for r in queryset.filter(status=Registration.Status.CANCELLED)]
        self.message_user(request, f"Reactivated {len(planned)} registration(s); {sum(planned)} step(s) planned.")


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


@admin.register(Step)
class StepAdmin(NoDelete, admin.ModelAdmin):
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

    @admin.action(description="Run selected pending steps now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[Step]) -> None:
        count = run_steps_now(queryset)
        self.message_user(request, f"{count} step(s) enqueued to run now; they still re-check consent, event and expiry.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


MESSAGE_INTERNALS = ("claim_token", "rate_slot_at", "lost_claims", "sending_at", "verify_at", "verify_attempts",
                     "next_attempt_at", "idempotency_key", "updated_at")


class PreviewForm(forms.Form):
    template = forms.ChoiceField(label="Template and channel")
    registration = forms.IntegerField(
        required=False, label="Registration id",
        help_text="Render for this registration's contact and event; empty: a sample contact (America/New_York).",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(f"{t}:{c}", f"{t} ({c})") for t, c in preview.available()]
        self.fields["template"].choices = choices  # type: ignore[attr-defined]

    def clean_registration(self) -> Registration | None:
        value = self.cleaned_data.get("registration")
        if value is None:
            return None
        found = Registration.objects.select_related("contact", "event").filter(pk=value).first()
        if found is None:
            raise forms.ValidationError(f"No registration has id {value}.")
        return found


@admin.register(Message)
class MessageAdmin(NoDelete, admin.ModelAdmin):
    list_display = ("id", "recipient", "template_type", "channel", "status", "reason", "sent")
    list_filter = ("status", "channel", ("registration__event", admin.RelatedOnlyFieldListFilter), "template_type",
                   "step_type", ErrorFilter)
    search_fields = ("contact__email", "contact__phone", "provider_message_id", "error")
    ordering = ("-created_at", "-id")
    list_select_related = ("contact",)
    readonly_fields = [f.name for f in Message._meta.fields]
    fieldsets = [
        (None, {"fields": [f.name for f in Message._meta.fields if f.name not in MESSAGE_INTERNALS and f.name != "id"]}),
        ("Internals", {"classes": ["collapse"], "fields": list(MESSAGE_INTERNALS)}),
    ]
    inlines = [DeliveryReportInline]
    actions = ["send_again"]

    @admin.display(description="to", ordering="to")
    def recipient(self, message: Message) -> SafeString | str:
        return short(message.to or message.contact.email or message.contact.phone, 28)

    @admin.display(description="reason / error")
    def reason(self, message: Message) -> SafeString | str:
        return short(message.error, 50)

    @admin.display(description="sent (contact's zone)", ordering="sent_at")
    def sent(self, message: Message) -> SafeString | str:
        return when_short(message.sent_at, message.contact.timezone)

    @admin.action(description="Send failed messages again")
    def send_again(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        count = requeue_failed(queryset)
        self.message_user(request, f"Re-queued {count} failed message(s); others were left as they were.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.preview_view)
        return [path("preview/", view, name="drip_message_preview"), *super().get_urls()]

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """Every template on every channel it has; one rendered in full, and a test send of
        it to the operator through the real sender."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        data = request.POST if request.method == "POST" else (request.GET if "template" in request.GET else None)
        form = PreviewForm(data)
        shown = None
        if form.is_valid():
            template_type, channel = form.cleaned_data["template"].split(":")
            registration = form.cleaned_data["registration"] or preview.sample_registration()
            shown = preview.preview(template_type, channel, registration)
            if request.method == "POST" and "send_test" in request.POST:
                self.send_test(request, template_type, channel, registration)
        return TemplateResponse(request, "admin/drip/preview.html", {
            **self.admin_site.each_context(request), "form": form, "shown": shown, "pairs": preview.available(),
            "title": "Template preview", "opts": self.model._meta,
        })

    def send_test(self, request: HttpRequest, template_type: str, channel: str, registration: Registration) -> None:
        user = request.user
        try:
            # About the event previewed (the sample's, or the chosen registration's): the
            # test is what the page showed.
            message = preview.send_test(template_type, channel, user.get_username(), getattr(user, "email", ""),
                                        registration.event)
        except FieldError as exc:
            self.message_user(request, f"No test sent: {exc}", messages.ERROR)
            return
        self.message_user(request, f"Test {template_type} ({channel}) queued to {message.to} as message {message.pk}, "
                                   "marked step type “test”.", messages.SUCCESS)
