"""Messages: every send and its delivery reports, read-only; "send again" and the template
preview's test send for an operator who may send."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.safestring import SafeString

from drip.admin.base import NoDelete, SendPermission, may_send, require
from drip.admin.inbound import DeliveryReportInline
from drip.admin.steps import ErrorFilter
from drip.doors.console import preview
from drip.doors.console.audit import record, record_addition
from drip.doors.console.display import short, when_short
from drip.engine import services
from drip.models import Message, Registration
from drip.support.errors import FieldError

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


class MessageAdmin(SendPermission, NoDelete, admin.ModelAdmin):
    list_display = ("id", "recipient", "template_type", "channel", "status", "reason", "sent")
    list_filter = ("status", "error_class", "channel", ("registration__event", admin.RelatedOnlyFieldListFilter), "template_type",
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

    @admin.action(description="Send failed messages again", permissions=["send"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        failed = list(queryset.filter(status=Message.Status.FAILED))
        count = services.send_failed_again(queryset)
        record(request, failed, f"Sent again via action 'send_again': {count} failed message(s) re-queued")
        self.message_user(request, f"Re-queued {count} failed message(s); others were left as they were.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.preview_view)
        return [path("preview/", view, name="drip_message_preview"), *super().get_urls()]

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """Every template on every channel it has; one rendered in full, and a test send of
        it to the operator through the real sender."""
        require(self.has_view_permission(request))
        sending = request.method == "POST" and "send_test" in request.POST
        require(not sending or may_send(request))  # a test send reaches the provider
        data = request.POST if request.method == "POST" else (request.GET if "template" in request.GET else None)
        form = PreviewForm(data)
        shown = None
        if form.is_valid():
            template_type, channel = form.cleaned_data["template"].split(":")
            registration = form.cleaned_data["registration"] or preview.sample_registration()
            shown = preview.preview(template_type, channel, registration)
            if sending:
                self.send_test(request, template_type, channel, registration)
        return TemplateResponse(request, "admin/drip/preview.html", {
            **self.admin_site.each_context(request), "form": form, "shown": shown, "pairs": preview.available(),
            "may_send": may_send(request),
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
        record_addition(request, message, f"Test send of {template_type} ({channel}) from the template preview")
        self.message_user(request, f"Test {template_type} ({channel}) queued to {message.to} as message {message.pk}, "
                                   "marked step type “test”.", messages.SUCCESS)
