"""The admin side of inbound: the inbound SMS inbox, delivery reports on a message's page,
a contact's consent in force (with its suppressions), and the "suppressed" list filter."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from ..consent import NEWEST_FIRST, latest_record
from ..models import Channel, ConsentRecord, Contact, DeliveryReport, InboundSms
from .twilio_webhooks import record_as_opt_out

SUPPRESSING_SOURCES = (ConsentRecord.Source.RECIPIENT, ConsentRecord.Source.PROVIDER)


def current_suppressions(records: QuerySet[ConsentRecord]) -> QuerySet[ConsentRecord]:
    """The records in force (the newest per contact and channel) that are suppressions."""
    newest = ConsentRecord.objects.filter(contact=OuterRef("contact"), channel=OuterRef("channel")).order_by(*NEWEST_FIRST)
    return records.filter(id=Subquery(newest.values("id")[:1]), granted=False, source__in=SUPPRESSING_SOURCES)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # audit rows (delivery reports) stay


class DeliveryReportInline(ReadOnlyInline):
    """On the message's page: every report a provider sent about it, oldest first."""

    model = DeliveryReport
    fields = ("occurred_at", "kind", "applied", "detail", "provider", "provider_event_id", "received_at", "payload")
    readonly_fields = fields
    ordering = ("occurred_at", "id")
    verbose_name_plural = "Delivery reports (oldest first; 'applied' = it changed the message)"


@admin.display(description="consent now")
def consent_now(contact: Contact) -> str:
    """For the contact's page (a read-only field): each channel's record in force, who gave
    it and when, and whether it is a suppression (which a plain grant cannot lift)."""
    if contact is None or contact.pk is None:
        return "-"
    lines = []
    for channel in Channel.values:
        record = latest_record(contact, channel)
        if record is None:
            lines.append(f"{channel}: never given")
            continue
        state = "SUPPRESSED" if record.is_suppression else ("granted" if record.granted else "revoked")
        why = f", reason: {record.reason}" if record.reason else ""
        lines.append(f"{channel}: {state} by {record.get_source_display()} ({record.detail or '-'}) "
                     f"on {record.created_at:%Y-%m-%d %H:%M} UTC{why}")
    return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines))


class SuppressedFilter(admin.SimpleListFilter):
    title = "suppressed"
    parameter_name = "suppressed"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(Channel.EMAIL, "email"), (Channel.SMS, "sms"), ("any", "email or sms")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Contact]) -> QuerySet[Contact]:
        value = self.value()
        if not value:
            return queryset
        records = current_suppressions(ConsentRecord.objects.all())
        if value in Channel.values:
            records = records.filter(channel=value)
        return queryset.filter(id__in=records.values("contact_id"))


@admin.register(InboundSms)
class InboundSmsAdmin(admin.ModelAdmin):
    """The inbox: what recipients wrote back that no keyword covered. Read it; record an
    opt-out when someone asks to stop in their own words."""

    list_display = ("received_at", "from_number", "body", "kind", "handled", "opted_out", "handled_by")
    list_filter = ("handled", "kind", "opted_out")
    search_fields = ("from_number", "body")
    readonly_fields = tuple(f.name for f in InboundSms._meta.fields)
    actions = ("record_as_opt_out", "mark_handled")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Record as opt-out (revoke SMS for every contact at the number)")
    def record_as_opt_out(self, request: HttpRequest, queryset: QuerySet[InboundSms]) -> None:
        operator = f"admin:{request.user.get_username()}"
        changed = sum(record_as_opt_out(inbound, operator) for inbound in queryset)
        self.message_user(request, f"Recorded {queryset.count()} message(s) as opt-outs; {changed} contact(s) revoked.",
                          messages.SUCCESS)

    @admin.action(description="Mark as handled (no opt-out)")
    def mark_handled(self, request: HttpRequest, queryset: QuerySet[InboundSms]) -> None:
        count = queryset.filter(handled=False).update(
            handled=True, handled_by=f"admin:{request.user.get_username()}", handled_at=timezone.now()
        )
        self.message_user(request, f"Marked {count} message(s) as handled.")
