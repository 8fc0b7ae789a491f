"""The status API: `GET /api/registrations/<registrationId>`, a registration's whole story
(steps, messages, the provider's delivery reports) for producers and operators' scripts,
with the event API's bearer token. A fixed number of queries whatever the history length:
the registration with its contact and event, its steps, its messages with their reports
prefetched in one more."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db.models import Prefetch
from django.http import HttpRequest, JsonResponse

from drip.doors.api import error
from drip.models import DeliveryReport, Message, Registration, Step
from drip.support.bearer import token_matches
from drip.support.errors import shown


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, or None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def step_json(step: Step) -> dict[str, Any]:
    return {
        "funnel": step.funnel, "key": step.key, "planVersion": step.plan_version, "dueAt": iso(step.due_at),
        "status": step.status, "reason": step.reason,
    }


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.pk, "templateType": message.template_type, "channel": message.channel, "status": message.status,
        "error": message.error, "to": message.to, "sentAt": iso(message.sent_at), "deliveredAt": iso(message.delivered_at),
        "providerMessageId": message.provider_message_id,
        # Prefetched oldest first (see story): no query per message.
        "events": [{"kind": r.kind, "at": iso(r.occurred_at), "detail": r.detail} for r in message.reports.all()],
    }


def story(registration: Registration) -> dict[str, Any]:
    steps = Step.objects.filter(registration=registration).order_by("due_at", "plan_version", "id")
    messages = (
        Message.objects.filter(registration=registration)
        .order_by("created_at", "id")
        .prefetch_related(Prefetch("reports", queryset=DeliveryReport.objects.order_by("occurred_at", "id")))
    )
    return {
        "registrationId": registration.external_id,
        "status": registration.status,
        "attended": registration.attended,
        "contactId": registration.contact.external_id,
        "eventId": registration.event.external_id,
        "eventStatus": registration.event.status,
        "scheduledAt": iso(registration.event.starts_at),
        "steps": [step_json(s) for s in steps],
        "messages": [message_json(m) for m in messages],
    }


def registration_status(request: HttpRequest, registration_id: str) -> JsonResponse:
    if request.method not in ("GET", "HEAD"):
        response = error(405, f"{request.method} is not allowed here: GET a registration's status")
        response["Allow"] = "GET, HEAD"
        return response
    if not settings.DRIP_API_TOKEN:
        return error(503, "the status API is disabled: set DRIP_API_TOKEN to enable it")
    if not token_matches(request, settings.DRIP_API_TOKEN):
        response = error(401, "missing or wrong bearer token (Authorization: Bearer $DRIP_API_TOKEN)")
        response["WWW-Authenticate"] = 'Bearer realm="drip"'
        return response
    registration = (
        Registration.objects.select_related("contact", "event").filter(external_id=registration_id).first()
    )
    if registration is None:
        return error(404, f"no registration with id {shown(registration_id)}", "registrationId")
    return JsonResponse(story(registration))
