"""Email delivery reports through anymail's tracking webhooks (`/anymail/<esp>/tracking/`):
anymail checks basic auth and normalizes each ESP's payload; this turns the normalized event
into a Report for the Message it is about."""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from anymail.signals import AnymailTrackingEvent, EventType, RejectReason
from anymail.utils import get_anymail_setting
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.urls import URLPattern
from django.utils import timezone

from drip.delivery.channels.base import METADATA_KEY
from drip.domain.consent import suppress
from drip.doors.inbound.reports import DETAIL_LIMIT, Report, record_report
from drip.models import Channel, DeliveryReport, Message, Suppression

log = logging.getLogger("drip.inbound")
Kind = DeliveryReport.Kind


KINDS = {
    EventType.QUEUED: Kind.QUEUED,
    EventType.SENT: Kind.SENT,
    EventType.DELIVERED: Kind.DELIVERED,
    EventType.OPENED: Kind.OPENED,
    EventType.CLICKED: Kind.CLICKED,
    EventType.DEFERRED: Kind.DEFERRED,
    EventType.COMPLAINED: Kind.COMPLAINED,
    EventType.UNSUBSCRIBED: Kind.UNSUBSCRIBED,
    EventType.SUBSCRIBED: Kind.SUBSCRIBED,
    EventType.REJECTED: Kind.REJECTED,
    EventType.FAILED: Kind.FAILED,
    EventType.BOUNCED: Kind.BOUNCED,
}
# An ESP that refuses to send for these reasons refuses for the address itself.
SUPPRESSING_REJECTIONS = {RejectReason.BOUNCED, RejectReason.SPAM, RejectReason.UNSUBSCRIBED, RejectReason.INVALID}


def on_tracking(sender: object, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any) -> None:
    """anymail.signals.tracking receiver (connected in DripConfig.ready)."""
    message = find_message(event)
    report = report_from(event, esp_name)
    if message is None:
        # Mail sent by something else through the same ESP account, or long purged: say so
        # and answer 200 (anymail does), or the ESP retries it for days. A hard bounce or a
        # complaint still suppresses the address: the ESP refuses it for every sender now.
        if report.suppress and report.address:
            suppress(Channel.EMAIL, report.address, Suppression.Source.PROVIDER, detail=report.suppress,
                     reason=report.detail[:DETAIL_LIMIT])
        log.warning("%s %s report for an unknown message (provider id %s)%s", esp_name, event.event_type,
                    event.message_id, ", address suppressed" if report.suppress and report.address else "; ignored")
        return
    record_report(message, report)


def find_message(event: AnymailTrackingEvent) -> Message | None:
    emails = Message.objects.filter(channel=Channel.EMAIL).select_related("contact")
    raw_id = str((event.metadata or {}).get(METADATA_KEY, ""))
    if raw_id.isdigit():
        found = emails.filter(pk=int(raw_id)).first()
        if found is not None:
            return found
    if event.message_id:
        return emails.filter(provider_message_id=str(event.message_id)).first()
    return None


def report_from(event: AnymailTrackingEvent, esp_name: str) -> Report:
    esp = event.esp_event if isinstance(event.esp_event, dict) else {}
    kind = KINDS.get(event.event_type, Kind.OTHER)
    if kind == Kind.BOUNCED and not is_hard_bounce(event, esp_name):
        kind = Kind.SOFT_BOUNCED
    provider = esp_name.lower().replace(" ", "_")
    return Report(
        channel=Channel.EMAIL, kind=kind, provider=provider,
        occurred_at=event.timestamp or timezone.now(), event_id=str(event.event_id or ""),
        detail=describe(event, esp), payload=esp or repr(event.esp_event),
        suppress=f"{provider}:{esp.get('Type') or esp.get('SuppressionReason') or kind}" if suppresses(event, kind) else "",
        address=event.recipient or "",
    )


def is_hard_bounce(event: AnymailTrackingEvent, esp_name: str) -> bool:
    """anymail maps Postmark's soft bounces to "bounced" too; Postmark's own fields tell
    them apart: a HardBounce, an address Postmark made inactive, or a suppression change."""
    if esp_name != "Postmark":
        return True  # the other ESPs report soft bounces as "deferred"
    esp = event.esp_event if isinstance(event.esp_event, dict) else {}
    return esp.get("Type") == "HardBounce" or esp.get("Inactive") is True or esp.get("RecordType") == "SubscriptionChange"


def suppresses(event: AnymailTrackingEvent, kind: str) -> bool:
    if kind in (Kind.BOUNCED, Kind.COMPLAINED, Kind.UNSUBSCRIBED):
        return True
    return kind == Kind.REJECTED and event.reject_reason in SUPPRESSING_REJECTIONS


def describe(event: AnymailTrackingEvent, esp: dict[str, Any]) -> str:
    parts = [esp.get("Type") or esp.get("SuppressionReason") or "", event.description or "", event.mta_response or ""]
    if event.click_url:
        parts.append(event.click_url)
    return "; ".join(str(p) for p in parts if p)


def require_webhook_secret(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """anymail only warns when WEBHOOK_SECRET is unset and then accepts anyone's report;
    a forged bounce would suppress a real recipient, so no secret means no webhook."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not get_anymail_setting("webhook_secret", default=None):
            log.error("anymail webhook refused: set ANYMAIL_WEBHOOK_SECRET (user:password) to accept reports")
            return HttpResponseForbidden("ANYMAIL_WEBHOOK_SECRET is not configured")
        try:
            return view(request, *args, **kwargs)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # anymail parses the ESP's body as it expects it; a body of another shape (not
            # JSON, a list of numbers) is the sender's error, not ours: a 400, not a 500.
            # Logged with its traceback, since a bug of ours would look the same.
            log.warning("anymail webhook refused a malformed report: %s: %s", type(exc).__name__, exc, exc_info=True)
            return HttpResponseBadRequest("malformed report")

    return guarded


def anymail_urlpatterns() -> list[URLPattern]:
    """anymail's own URLs (`anymail.urls`), each view behind `require_webhook_secret`."""
    from anymail import urls

    return [
        URLPattern(p.pattern, require_webhook_secret(p.callback), p.default_args, p.name)
        for p in urls.urlpatterns
        if isinstance(p, URLPattern)
    ]
