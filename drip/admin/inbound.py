"""The admin side of inbound: the inbound SMS inbox, delivery reports on a message's page,
a contact's consent in force, and the "suppressed" list filter. Registered on the console's
site in drip/admin/__init__.py."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.db.models.functions import Lower
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from drip.domain.consent import active_suppression, latest_record
from drip.doors.console.audit import record
from drip.doors.inbound.twilio_webhooks import record_as_opt_out
from drip.models import Channel, Contact, DeliveryReport, InboundSms, Suppression


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
    it and when; and first, a suppression of the address, which outranks any grant."""
    if contact is None or contact.pk is None:
        return "-"
    lines = []
    for channel in Channel.values:
        suppression = active_suppression(channel, contact.address_for(channel))
        if suppression is not None:
            lines.append(f"{channel}: SUPPRESSED by {suppression.get_source_display()} ({suppression.detail or '-'}) "
                         f"on {suppression.created_at:%Y-%m-%d %H:%M} UTC: nothing is sent to this address")
        record = latest_record(contact, channel)
        if record is None:
            lines.append(f"{channel}: never given")
            continue
        state = "granted" if record.granted else "revoked"
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
        """Contacts whose current address is suppressed: a suppression belongs to the address
        (stored normalized: a case-folded email, an E.164 number), not to one contact row."""
        value = self.value()
        if not value:
            return queryset
        active = Suppression.objects.filter(lifted_at__isnull=True).exclude(address="")
        emails = active.filter(channel=Channel.EMAIL).values("address")
        phones = active.filter(channel=Channel.SMS).values("address")
        queryset = queryset.annotate(email_key=Lower("email"))
        if value == Channel.EMAIL:
            return queryset.filter(email_key__in=emails)
        if value == Channel.SMS:
            return queryset.filter(phone__in=phones)
        return queryset.filter(email_key__in=emails) | queryset.filter(phone__in=phones)


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

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # what a recipient wrote is the record of an opt-out (erasure blanks it)

    @admin.action(description="Record as opt-out (revoke SMS for every contact at the number)", permissions=["change"])
    def record_as_opt_out(self, request: HttpRequest, queryset: QuerySet[InboundSms]) -> None:
        operator = f"admin:{request.user.get_username()}"
        inbound = list(queryset)
        changed = 0
        for message in inbound:
            revoked = record_as_opt_out(message, operator)
            record(request, [message], f"Recorded as opt-out via action 'record_as_opt_out': {revoked} contact(s) revoked")
            changed += revoked
        self.message_user(request, f"Recorded {len(inbound)} message(s) as opt-outs; {changed} contact(s) revoked.",
                          messages.SUCCESS)

    @admin.action(description="Mark as handled (no opt-out)", permissions=["change"])
    def mark_handled(self, request: HttpRequest, queryset: QuerySet[InboundSms]) -> None:
        pending = list(queryset.filter(handled=False))
        count = InboundSms.objects.filter(pk__in=[m.pk for m in pending], handled=False).update(
            handled=True, handled_by=f"admin:{request.user.get_username()}", handled_at=timezone.now()
        )
        record(request, pending, f"Marked as handled via action 'mark_handled' ({count} message(s))")
        self.message_user(request, f"Marked {count} message(s) as handled.")
