"""Direct sends (the seed's `message.send`): one Message outside any funnel, handed to the
same sender (send_messages) as every funnel step."""
from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import Channel, Contact, Message, Registration


class DirectSendError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def template_types() -> list[str]:
    root = settings.MESSAGE_TEMPLATES_DIR
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def check_template(template_type: str, channel: str) -> None:
    if channel not in Channel.values:
        raise DirectSendError(f"channel must be one of {', '.join(Channel.values)}, not {channel!r}", "channel")
    folder = settings.MESSAGE_TEMPLATES_DIR / template_type
    if template_type not in template_types():
        raise DirectSendError(
            f"unknown template type {template_type!r}; known: {', '.join(template_types())}", "templateType"
        )
    needed = ["sms.txt"] if channel == Channel.SMS else ["subject.txt", "body.txt", "body.html"]
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise DirectSendError(f"template type {template_type!r} has no {channel} template ({', '.join(missing)})", "templateType")


def send_direct(
    contact: Contact,
    channel: str,
    template_type: str,
    registration: Registration | None = None,
    step_type: str = "",
    idempotency_key: str | None = None,
) -> tuple[Message, bool]:
    """Create the Message and enqueue it after commit. Returns (message, created); with an
    idempotency key, a repeat returns the first message and sends nothing new."""
    from .tasks import enqueue_sends

    check_template(template_type, channel)
    if registration is not None and registration.contact_id != contact.pk:
        raise DirectSendError("registration belongs to another contact", "registrationId")
    if idempotency_key:
        existing = Message.objects.filter(idempotency_key=idempotency_key).first()
        if existing and (existing.contact_id, existing.channel, existing.template_type) != (contact.pk, channel, template_type):
            # A key reused for a different message is a caller's bug: say so rather than
            # answer with a message that is not the one they asked for.
            raise DirectSendError(
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
                expires_at=None, next_attempt_at=timezone.now(),
            )
            transaction.on_commit(lambda: enqueue_sends([message.pk]))
    except IntegrityError:
        # Two callers with the same key at once: the other one won.
        return Message.objects.get(idempotency_key=idempotency_key), False
    return message, True
