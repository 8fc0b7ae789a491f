"""First-run set-up for `make run`: a demo superuser and a demo event with two contacts.
Does nothing when a superuser already exists, so it is safe on every start. Refuses unless
DEBUG is on: the demo password is public (README), so it must never reach a real install."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from drip.domain.consent import record_consent
from drip.models import Channel, ConsentRecord, Contact, Event


class Command(BaseCommand):
    help = "Create the demo superuser (admin / admin) and demo data on first run."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "bootstrap_demo creates a superuser whose password is public (admin / admin); it runs only with "
                "DEBUG=1 (make run). Create real accounts with `manage.py createsuperuser`."
            )
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        User.objects.create_superuser("admin", "admin@example.com", "admin")
        event = Event.objects.create(
            external_id="demo-webinar", title="Drip demo webinar",
            starts_at=timezone.now() + timedelta(days=2), timezone="America/New_York",
            join_url="https://example.com/join/demo",
        )
        people = [
            ("demo-ada", "ada@example.com", "+14155550101", "Ada", "America/New_York", True),
            ("demo-grace", "grace@example.com", "", "Grace", "Europe/Paris", False),
        ]
        for external_id, email, phone, first, tz, sms in people:
            contact = Contact.objects.create(
                external_id=external_id, email=email, phone=phone, first_name=first, timezone=tz
            )
            record_consent(contact, Channel.EMAIL, True, ConsentRecord.Source.ADMIN, detail="demo data")
            if sms:
                record_consent(contact, Channel.SMS, True, ConsentRecord.Source.ADMIN, detail="demo data")
        self.stdout.write(
            f"Demo data: superuser admin/admin, event '{event.title}', 2 contacts. "
            "Enroll them from Contacts → select → 'Enroll in event…'."
        )
