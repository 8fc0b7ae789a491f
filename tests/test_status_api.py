"""GET /api/registrations/<registrationId>: the token, 404 / 405, the body as docs/api.md
"Status API" draws it, a bounded query count whatever the history length, and the story of
a real enrollment sent by a real worker."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from drip.models import Channel, DeliveryReport, Message, Registration
from tests.factories import enroll, make_contact, make_event
from tests.helpers import wait_until

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def get(client, settings, db):
    settings.DRIP_API_TOKEN = TOKEN

    def fetch(registration_id: str, headers: dict[str, str] | None = None) -> Any:
        return client.get(f"/api/registrations/{registration_id}", headers=AUTH if headers is None else headers)

    return fetch


def add_message(registration: Registration, n: int, reports: int = 2, **fields: Any) -> Message:
    sent = datetime(2030, 1, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=n)
    data: dict[str, Any] = {
        "contact": registration.contact, "registration": registration, "channel": Channel.EMAIL,
        "template_type": "welcome", "status": Message.Status.DELIVERED, "to": registration.contact.email,
        "sent_at": sent, "delivered_at": sent + timedelta(seconds=5), "provider_message_id": f"pm-{n}",
    }
    data.update(fields)
    message = Message.objects.create(**data)
    # Stored newest first, so the answer's order (oldest first) is the query's, not the insert's.
    for i in reversed(range(reports)):
        DeliveryReport.objects.create(
            message=message, channel=message.channel, kind=DeliveryReport.Kind.OPENED if i else DeliveryReport.Kind.DELIVERED,
            occurred_at=sent + timedelta(seconds=5 + i), provider="postmark", dedupe_key=f"k-{message.pk}-{i}", detail=f"d{i}",
        )
    return message


# --- doors: token, 404, 405 ---------------------------------------------------------------


def test_it_answers_401_without_the_token(get):
    registration = enroll(make_contact(), make_event())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = get(registration.external_id, headers)
        assert response.status_code == 401 and "DRIP_API_TOKEN" in response.json()["error"]


def test_it_answers_503_while_no_token_is_configured(get, settings):
    settings.DRIP_API_TOKEN = ""
    response = get("r-anything")
    assert response.status_code == 503 and "DRIP_API_TOKEN" in response.json()["error"]


def test_an_unknown_id_is_a_404_naming_the_field(get):
    response = get("r-nobody")
    assert response.status_code == 404
    assert response.json() == {"error": "no registration with id 'r-nobody'", "field": "registrationId"}


def test_only_get_is_allowed(get, client):
    registration = enroll(make_contact(), make_event())
    for method in (client.post, client.put, client.delete, client.patch):
        response = method(f"/api/registrations/{registration.external_id}", headers=AUTH)
        assert response.status_code == 405 and "GET" in response["Allow"]


# --- the body -----------------------------------------------------------------------------


def test_the_body_is_the_registrations_whole_story(get):
    contact = make_contact()
    event = make_event(starts_at=datetime(2030, 1, 2, 15, 0, tzinfo=UTC))
    registration = enroll(contact, event)
    message = add_message(registration, 1)
    skipped = add_message(registration, 2, reports=0, channel=Channel.SMS, status=Message.Status.SKIPPED, error="no sms consent",
                          to="", sent_at=None, delivered_at=None, provider_message_id="")

    response = get(registration.external_id)
    assert response.status_code == 200
    body = response.json()
    assert {k: v for k, v in body.items() if k not in ("steps", "messages")} == {
        "registrationId": registration.external_id, "status": "active", "attended": None, "contactId": contact.external_id,
        "eventId": event.external_id, "eventStatus": "scheduled", "scheduledAt": "2030-01-02T15:00:00Z",
    }
    assert [(s["funnel"], s["key"], s["planVersion"], s["status"], s["reason"]) for s in body["steps"]] == [
        ("pre_event", "welcome", 1, "enqueued", ""), ("pre_event", "reminder_24h", 1, "pending", ""),
        ("pre_event", "reminder_1h", 1, "pending", ""),
    ]
    assert body["steps"][1]["dueAt"] == "2030-01-01T15:00:00Z" and body["steps"][2]["dueAt"] == "2030-01-02T14:00:00Z"
    assert body["messages"] == [
        {"id": message.pk, "templateType": "welcome", "channel": "email", "status": "delivered", "error": "",
         "to": contact.email, "sentAt": "2030-01-01T12:01:00Z", "deliveredAt": "2030-01-01T12:01:05Z",
         "providerMessageId": "pm-1", "events": [
             {"kind": "delivered", "at": "2030-01-01T12:01:05Z", "detail": "d0"},
             {"kind": "opened", "at": "2030-01-01T12:01:06Z", "detail": "d1"}]},
        {"id": skipped.pk, "templateType": "welcome", "channel": "sms", "status": "skipped", "error": "no sms consent",
         "to": "", "sentAt": None, "deliveredAt": None, "providerMessageId": "", "events": []},
    ]


def test_a_cancelled_registration_shows_its_reasons(get):
    registration = enroll(make_contact(), make_event())
    from drip.engine import services

    services.cancel_registration(registration)
    body = get(registration.external_id).json()
    assert body["status"] == "cancelled"
    assert {(s["status"], s["reason"]) for s in body["steps"]} == {("cancelled", "registration cancelled")}


@pytest.mark.parametrize("messages", [1, 50])
def test_the_query_count_does_not_grow_with_the_history(get, django_assert_max_num_queries, messages):
    registration = enroll(make_contact(), make_event())
    for n in range(messages):
        add_message(registration, n, reports=3)
    # registration + contact + event, steps, messages, their reports: four, whatever the length.
    with django_assert_max_num_queries(4):
        body = get(registration.external_id).json()
    assert len(body["messages"]) == messages and all(len(m["events"]) == 3 for m in body["messages"])


# --- end to end ---------------------------------------------------------------------------


def test_a_producer_sees_the_welcome_sent_by_the_worker(worker, providers, client, settings):
    settings.DRIP_API_TOKEN = TOKEN
    enrollment = {"name": "event.enrolled", "data": {
        "contactId": "c-grace", "eventId": "e-status", "registrationId": "r-grace", "eventTitle": "Status webinar",
        "scheduledAt": (timezone.now() + timedelta(days=2)).isoformat(), "contactEmail": "grace@example.com",
        "emailConsent": True, "smsConsent": False}}
    assert client.post("/api/events", data=json.dumps(enrollment), content_type="application/json", headers=AUTH).status_code == 202
    [welcome] = providers.wait_for(1, kind="email")

    def welcome_sent() -> dict[str, Any] | None:
        body = client.get("/api/registrations/r-grace", headers=AUTH).json()
        sent = [m for m in body["messages"] if m["templateType"] == "welcome" and m["status"] == "sent"]
        return body if sent else None

    wait_until(welcome_sent)
    body = welcome_sent()
    assert body is not None
    [message] = body["messages"]
    assert message["providerMessageId"] == welcome.provider_id and message["to"] == "grace@example.com"
    assert message["sentAt"].endswith("Z") and message["events"] == []
    assert {s["key"]: s["status"] for s in body["steps"]}["welcome"] == "done"
