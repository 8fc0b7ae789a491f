"""Erasing a person (the right to erasure): their personal fields are blanked everywhere they
were copied, and their addresses stay refused by a keyed hash (drip.domain.consent.suppress), so a
later enrollment with the same address is refused without the address being kept.

Deleting is not offered: consent history, messages and delivery reports are the record of
what was sent to whom and on what grounds, and outlive the person's details (PROTECT).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.utils import timezone

from drip.domain.consent import hash_of, suppress
from drip.engine.services import cancel_registration
from drip.models import Channel, Contact, DeliveryReport, InboundSms, Message, Registration, Suppression

log = logging.getLogger("drip.erasure")


@dataclass(frozen=True)
class Erased:
    contact_id: int
    addresses_suppressed: int
    registrations_cancelled: int
    messages_blanked: int

    def describe(self) -> str:
        return (f"erased contact #{self.contact_id}: {self.addresses_suppressed} address(es) kept suppressed, "
                f"{self.registrations_cancelled} registration(s) cancelled, {self.messages_blanked} message(s) blanked")


def erase_contact(contact: Contact, by: str) -> Erased:
    """Suppress the contact's addresses, stop everything still planned for them, and blank
    their personal fields in every table that copied them. Erasing twice changes nothing more."""
    with transaction.atomic():
        contact = Contact.objects.select_for_update().get(pk=contact.pk)
        if contact.erased_at is not None:
            return Erased(contact.pk, 0, 0, 0)
        addresses = [(ch, contact.address_for(ch)) for ch in Channel.values if contact.address_for(ch)]
        for channel, address in addresses:
            suppress(channel, address, Suppression.Source.OPERATOR, detail=f"erasure:{by}", reason="personal data erased")
        cancelled = 0
        for registration in Registration.objects.filter(contact=contact, status=Registration.Status.ACTIVE):
            cancel_registration(registration)
            cancelled += 1
        messages = Message.objects.filter(contact=contact)
        messages.withdraw("contact erased")
        DeliveryReport.objects.filter(message__contact=contact).update(payload="", detail="")
        blanked = messages.update(to="", subject="", body="", html="", updated_at=timezone.now())
        _blank_history(contact, addresses)
        _blank_addresses(addresses)
        Contact.objects.filter(pk=contact.pk).update(
            external_id=f"erased-{contact.pk}", email="", phone="", first_name="", last_name="", timezone="UTC",
            erased_at=timezone.now(), updated_at=timezone.now(),
        )
    erased = Erased(contact.pk, len(addresses), cancelled, blanked)
    log.info("%s (by %s)", erased.describe(), by)
    return erased


def _blank_history(contact: Contact, addresses: list[tuple[str, str]]) -> None:
    """The console's history names objects as they looked (str(): "Ada <ada@…> → Webinar",
    a number and its text, an address): every entry about the person's rows is renamed."""
    hashes = [hash_of(channel, address) for channel, address in addresses]
    rows: list[tuple[type[models.Model], list[int]]] = [
        (Contact, [contact.pk]),
        (Registration, list(Registration.objects.filter(contact=contact).values_list("pk", flat=True))),
        (Message, list(Message.objects.filter(contact=contact).values_list("pk", flat=True))),
        (Suppression, list(Suppression.objects.filter(address_hash__in=hashes).values_list("pk", flat=True))),
        (InboundSms, list(InboundSms.objects.filter(
            from_number__in=[a for ch, a in addresses if ch == Channel.SMS]).values_list("pk", flat=True))),
    ]
    for model, pks in rows:
        if pks:
            LogEntry.objects.filter(
                content_type=ContentType.objects.get_for_model(model), object_id__in=[str(pk) for pk in pks]
            ).update(object_repr=f"{model._meta.verbose_name} of erased contact #{contact.pk}")


def _blank_addresses(addresses: list[tuple[str, str]]) -> None:
    """The suppressions keep only the hash (and where they came from); the number's inbound
    SMS lose the number and text."""
    for channel, address in addresses:
        # A reason may quote the person (an inbox message, a bounce naming the address).
        Suppression.objects.filter(channel=channel, address_hash=hash_of(channel, address)).update(
            address="", reason="personal data erased"
        )
        if channel == Channel.SMS:
            InboundSms.objects.filter(from_number=address).update(from_number="", body="")
