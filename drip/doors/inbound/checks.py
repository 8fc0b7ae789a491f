"""Start-up warnings (Django's system checks: `manage.py migrate`, `check`, `runserver`)
for compliance settings a production deployment must not leave out."""
from __future__ import annotations

from typing import Any

from anymail.utils import get_anymail_setting
from django.conf import settings
from django.core.checks import CheckMessage, Warning


def compliance_checks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every start-up (`migrate`, `runserver`, any command): the one CAN-SPAM requires."""
    if settings.DEBUG or settings.DRIP_SENDER_ADDRESS:
        return []
    return [Warning(
        "DRIP_SENDER_ADDRESS is not set: emails go out without a postal address in the footer.",
        hint="CAN-SPAM requires the sender's valid physical postal address in every commercial email.",
        id="drip.W001",
    )]


def deploy_checks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """`manage.py check --deploy`: what a production deployment should also have."""
    found: list[CheckMessage] = []
    if not get_anymail_setting("webhook_secret", default=None):
        found.append(Warning(
            "ANYMAIL_WEBHOOK_SECRET is not set: /anymail/<esp>/tracking/ refuses every delivery report.",
            hint="Set it to user:password and put the same credentials in the ESP's webhook URL.",
            id="drip.W002",
        ))
    if not settings.PUBLIC_BASE_URL.startswith("https://"):
        found.append(Warning(
            f"PUBLIC_BASE_URL is {settings.PUBLIC_BASE_URL!r}: unsubscribe links and Twilio callbacks are not https.",
            hint="Mailbox providers expect an https List-Unsubscribe URL (RFC 8058).",
            id="drip.W003",
        ))
    return found
