"""Contacts: their consent history and the suppressions on their addresses, enrolling them,
importing them from CSV, and erasing a person (never deleting their history)."""
from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from drip.admin.base import NoDelete, require
from drip.admin.inbound import SuppressedFilter, consent_now
from drip.domain import consent
from drip.domain.validation import normalize_phone
from drip.doors.console import csv_import, jobs, preview
from drip.doors.console.audit import record
from drip.doors.console.display import when
from drip.engine import erasure, services
from drip.models import Channel, ConsentRecord, Contact, Event, Suppression


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


def suppressed_channels(contact: Contact) -> dict[str, Suppression]:
    """The active suppression of each channel on the contact's current addresses."""
    return {s.channel: s for s in consent.suppressions_for_contact(contact)}


class ContactForm(forms.ModelForm):
    email_consent = forms.BooleanField(required=False, label="Email consent")
    sms_consent = forms.BooleanField(required=False, label="SMS consent")
    consent_reason = forms.CharField(
        required=False, label="Reason for a consent change",
        help_text="Required to grant consent on a suppressed address (STOP, unsubscribe, bounce, complaint): "
                  "it lifts the suppression, and the reason is kept with it.",
    )

    class Meta:
        model = Contact
        fields = ["external_id", "email", "phone", "first_name", "last_name", "timezone"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["email_consent"].initial = consent.has_consent(self.instance, Channel.EMAIL)
            self.fields["sms_consent"].initial = consent.has_consent(self.instance, Channel.SMS)

    def clean_phone(self) -> str:
        return normalize_phone(self.cleaned_data.get("phone", ""))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not self.instance.pk:
            return cleaned
        # A grant over a suppression lifts it: only with a written reason (docs/security.md, "Consent belongs to the address").
        suppressed = suppressed_channels(self.instance)
        reason = cleaned.get("consent_reason", "").strip()
        for channel, suppression in suppressed.items():
            if cleaned.get(f"{channel}_consent") and not consent.has_consent(self.instance, channel) and not reason:
                self.add_error("consent_reason", (
                    f"{channel} is suppressed ({suppression.get_source_display()}: {suppression.detail or '-'}); "
                    "give a reason to lift it."
                ))
        return cleaned


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


class ContactAdmin(NoDelete, admin.ModelAdmin):
    form = ContactForm
    list_display = ("external_id", "email", "phone", "first_name", "last_name", "timezone")
    search_fields = ("external_id", "email", "phone", "first_name", "last_name")
    list_filter = (SuppressedFilter,)
    readonly_fields = ("consent_now", "suppressions")
    consent_now = staticmethod(consent_now)
    inlines = [ConsentInline]
    actions = ["enroll_in_event", "erase_contacts"]

    @admin.display(description="suppressions on these addresses")
    def suppressions(self, contact: Contact) -> SafeString | str:
        """Every active suppression of the contact's current email and phone, each linked to
        its page (where an operator lifts it, with a reason)."""
        if contact is None or contact.pk is None:
            return "-"
        found = consent.suppressions_for_contact(contact)
        if not found:
            return "none"
        return format_html_join(
            format_html("<br>"), '<a href="{}">{}</a> since {} UTC',
            ((reverse("admin:drip_suppression_change", args=[s.pk]), str(s), f"{s.created_at:%Y-%m-%d %H:%M}")
             for s in found),
        )

    def save_model(self, request: HttpRequest, obj: Contact, form: ContactForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        self.warn_about_twins(request, obj)
        username = request.user.get_username()
        for channel in (Channel.EMAIL, Channel.SMS):
            wanted = form.cleaned_data.get(f"{channel}_consent", False)
            if wanted != consent.has_consent(obj, channel) and (change or wanted):
                # The source ADMIN with a reason lifts a suppression on the address (drip.domain.consent).
                done = consent.record_consent(
                    obj, channel, wanted, ConsentRecord.Source.ADMIN,
                    detail=f"admin:{username}", reason=form.cleaned_data.get("consent_reason", ""),
                )
                if wanted and not done.granted:
                    self.message_user(request, f"{channel} consent was not granted: {done.refusal()}", messages.WARNING)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.import_view)
        return [path("import/", view, name="drip_contact_import"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        may_import = self.has_add_permission(request) and self.has_change_permission(request)
        return super().changelist_view(request, {"may_import": may_import, **(extra_context or {})})

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Upload → a preview listing every row's error (nothing written) → one atomic import."""
        require(self.has_add_permission(request) and self.has_change_permission(request))
        form = ImportForm(request.POST or None, request.FILES or None)
        checked = None
        if request.method == "POST" and form.is_valid():
            event: Event = form.cleaned_data["event"]
            text = form.cleaned_data["csv_text"]
            checked = csv_import.plan(text, event)
            if "confirm" in request.POST and checked.ok:
                return self._import(request, event, checked)
            form = ImportForm(initial={"event": event.pk, "csv_text": text})
        return TemplateResponse(request, "admin/drip/csv_import.html", {
            **self.admin_site.each_context(request), "form": form, "checked": checked, "columns": csv_import.COLUMNS,
            "title": "Import contacts from CSV into an event", "opts": self.model._meta,
        })

    def _import(self, request: HttpRequest, event: Event, checked: csv_import.Plan) -> HttpResponse:
        if len(checked.rows) > settings.DRIP_IMPORT_INLINE_ROWS:
            job = jobs.start_import(event, csv_import.items_of(checked), request.user.pk)
            record(request, [event], f"CSV import of {len(checked.rows)} row(s) started as console job {job.pk}")
            return HttpResponseRedirect(reverse("admin:drip_consolejob_progress", args=[job.pk]))
        counts = csv_import.import_rows(checked)
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        record(request, [event], f"Imported {len(checked.rows)} CSV row(s): {summary}")
        self.message_user(request, f"Imported {len(checked.rows)} row(s) into {event}: {summary}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:drip_registration_changelist") + f"?event__id__exact={event.pk}")

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

    @admin.action(description="Enroll in event…", permissions=["change"])
    def enroll_in_event(self, request: HttpRequest, queryset: QuerySet[Contact]) -> HttpResponse | None:
        form = EnrollForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            event = form.cleaned_data["event"]
            created, existing = enroll_contacts(queryset, event)
            record(request, queryset, f"Enrolled in event {event.external_id} via action 'enroll_in_event': "
                                      f"{created} enrolled, {existing} already registered")
            self.message_user(
                request, f"Enrolled {created} contact(s) in {event.title}; {existing} already registered.", messages.SUCCESS
            )
            return None
        return render(
            request, "admin/drip/enroll_in_event.html",
            {**self.admin_site.each_context(request), "contacts": queryset, "form": form,
             "title": "Enroll contacts in an event", "opts": self.model._meta},
        )

    @admin.action(description="Erase personal data…", permissions=["change"])
    def erase_contacts(self, request: HttpRequest, queryset: QuerySet[Contact]) -> HttpResponse | None:
        """Blanks the person's fields and keeps their history and the suppression of their
        addresses (drip.engine.erasure); asks first, since it cannot be undone."""
        contacts = list(queryset.filter(erased_at__isnull=True))
        if "apply" not in request.POST:
            return render(request, "admin/drip/erase_contacts.html", {
                **self.admin_site.each_context(request), "contacts": contacts,
                "title": "Erase personal data", "opts": self.model._meta,
            })
        username = request.user.get_username()
        for contact in contacts:
            erased = erasure.erase_contact(contact, by=username)
            contact.refresh_from_db()  # the log names it as erased, never as it was
            record(request, [contact], f"Erased via action 'erase_contacts': {erased.describe()}")
        self.message_user(request, f"Erased {len(contacts)} contact(s); their addresses stay suppressed.", messages.SUCCESS)
        return None
