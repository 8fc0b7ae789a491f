"""Direct sends (the seed's `message.send`): one Message outside any funnel, handed to the
same sender as every funnel step."""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from drip.domain.funnels import purpose_of
from drip.models import Channel, Contact, Message, Registration
from drip.support.errors import FieldError
from drip.timer.publish import enqueue_sends

# The files each channel needs in templates/messages/<template type>/.
NEEDED = {Channel.SMS: ("sms.txt",), Channel.EMAIL: ("subject.txt", "body.txt", "body.html")}


@lru_cache(maxsize=4)
def _templates(root: Path) -> dict[str, frozenset[str]]:
    """Template type → the files it has. Read once per process: templates ship with the
    code, and a deployment restarts the workers."""
    return {
        folder.name: frozenset(p.name for p in folder.iterdir())
        for folder in sorted(root.iterdir()) if folder.is_dir() and not folder.name.startswith("_")
    }


def template_types() -> list[str]:
    return list(_templates(settings.MESSAGE_TEMPLATES_DIR))


def check_template(template_type: str, channel: str) -> None:
    """Raise FieldError (channel, templateType) unless this template can be sent on this channel."""
    if channel not in Channel.values:
        raise FieldError(f"channel must be one of {', '.join(Channel.values)}, not {channel!r}", "channel")
    templates = _templates(settings.MESSAGE_TEMPLATES_DIR)
    if template_type not in templates:
        raise FieldError(f"unknown template type {template_type!r}; known: {', '.join(templates)}", "templateType")
    missing = [name for name in NEEDED[Channel(channel)] if name not in templates[template_type]]
    if missing:
        raise FieldError(f"template type {template_type!r} has no {channel} template ({', '.join(missing)})", "templateType")


def send_direct(
    contact: Contact,
    channel: str,
    template_type: str,
    registration: Registration | None = None,
    step_type: str = "",
    idempotency_key: str | None = None,
) -> tuple[Message, bool]:
    """Create the Message and enqueue it after commit. Returns (message, created); with an
    idempotency key, a repeat returns the first message and sends nothing new. The one check
    of the template (the intake does not repeat it)."""
    check_template(template_type, channel)
    if registration is not None and registration.contact_id != contact.pk:
        raise FieldError("registration belongs to another contact", "registrationId")
    if idempotency_key:
        existing = Message.objects.filter(idempotency_key=idempotency_key).first()
        if existing and (existing.contact_id, existing.channel, existing.template_type) != (contact.pk, channel, template_type):
            # A key reused for a different message is a caller's bug: say so rather than
            # answer with a message that is not the one they asked for.
            raise FieldError(
                f"idempotencyKey {idempotency_key!r} was already used for another message (id {existing.pk})",
                "idempotencyKey",
            )
        if existing:
            return existing, False
    try:
        with transaction.atomic():
            message = Message.objects.create(
                contact=contact, registration=registration, channel=channel, template_type=template_type,
                step_type=step_type, idempotency_key=idempotency_key or None, to=contact.address_for(channel),
                purpose=purpose_of(template_type), expires_at=None, next_attempt_at=timezone.now(),
            )
            transaction.on_commit(lambda: enqueue_sends([(message.pk, message.channel)]))
    except IntegrityError:
        # Two callers with the same key at once: the other one won.
        return Message.objects.get(idempotency_key=idempotency_key), False
    return message, True


def send_direct_many(
    recipients: list[tuple[Registration, str]],
    template_type: str,
    step_type: str = "",
    expires_at: datetime | None = None,
) -> list[Message]:
    """`send_direct` by email for many registrations at once (one INSERT, tasks on commit):
    each (registration, idempotency key) gets its message unless its key was used before.
    Returns the messages created; the caller holds the lock that makes "used before"
    stable (a reschedule holds its event's row)."""
    check_template(template_type, Channel.EMAIL)
    keys = [key for _, key in recipients]
    used = set(Message.objects.filter(idempotency_key__in=keys).values_list("idempotency_key", flat=True))
    now = timezone.now()
    created = Message.objects.bulk_create([
        Message(
            contact=registration.contact, registration=registration, channel=Channel.EMAIL, template_type=template_type,
            step_type=step_type, idempotency_key=key, to=registration.contact.address_for(Channel.EMAIL),
            purpose=purpose_of(template_type), expires_at=expires_at, next_attempt_at=now,
        )
        for registration, key in recipients if key not in used
    ])
    transaction.on_commit(lambda: enqueue_sends([(m.pk, m.channel) for m in created]))
    return created
