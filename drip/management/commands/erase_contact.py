"""`python manage.py erase_contact <contact id> [...]`: the right to erasure from the shell,
as the console's "Erase personal data" action does it (drip.engine.erasure)."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from drip.engine.erasure import erase_contact
from drip.models import Contact
from drip.support.logs import audit, shell_user


class Command(BaseCommand):
    help = (
        "Erase contacts by their external id: blank their personal fields everywhere, cancel what is planned "
        "for them, and keep their addresses suppressed (by a keyed hash) so they are never messaged again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("contact_ids", nargs="+", metavar="contact_id", help="the contact's external id (contactId)")

    def handle(self, *args: Any, contact_ids: list[str], **options: Any) -> None:
        contacts = {c.external_id: c for c in Contact.objects.filter(external_id__in=contact_ids)}
        unknown = [i for i in contact_ids if i not in contacts]
        if unknown:
            raise CommandError(f"unknown contact id(s): {', '.join(repr(i) for i in unknown)}; nothing was erased")
        by = f"shell:{shell_user()}"
        for external_id in contact_ids:
            erased = erase_contact(contacts[external_id], by=by)
            audit.info("%s erased contact #%s", by, erased.contact_id)
            self.stdout.write(erased.describe())
