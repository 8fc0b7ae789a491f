"""RFC 8058 one-click unsubscribe, and the page behind the footer link.

POST (the mailbox provider's one-click, or the page's button) revokes; GET only shows the
page, since mail scanners fetch every link in a message. The signed token is the only
credential: no cookie, no login, no CSRF token (a one-click POST carries none).
"""
from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from ..consent import Outcome, has_consent, record_consent, record_for_address
from ..models import ConsentRecord, Contact
from .tokens import BadToken, read_token

log = logging.getLogger("drip.inbound")
TEMPLATE = "inbound/unsubscribe.html"


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        contact_id, channel = read_token(token)
    except BadToken as exc:
        log.warning("unsubscribe with a bad token refused: %s", exc)
        return render(request, TEMPLATE, {"invalid": True}, status=400)
    contact = Contact.objects.filter(pk=contact_id).first()
    if contact is None:
        return render(request, TEMPLATE, {"invalid": True}, status=404)
    notice = ""
    if request.method == "POST":
        wants_back = request.POST.get("action") == "resubscribe"
        notice = resubscribe(contact, channel) if wants_back else revoke(request, contact, channel)
    context = {
        "channel": channel, "address": masked(contact.address_for(channel)), "notice": notice,
        "subscribed": has_consent(contact, channel),
    }
    # 200 with the page, never a redirect: a one-click POST that is redirected is lost.
    return render(request, TEMPLATE, context)


def revoke(request: HttpRequest, contact: Contact, channel: str) -> str:
    one_click = request.POST.get("List-Unsubscribe") == "One-Click"
    detail = "unsubscribe:one-click" if one_click else "unsubscribe:page"
    address = contact.address_for(channel)
    # The address is what unsubscribed: every contact at it (consent.record_for_address).
    changes = record_for_address(channel, address, False, ConsentRecord.Source.RECIPIENT, detail=detail)
    if not any(c.current and c.current.contact_id == contact.pk for c in changes):
        changes.append(record_consent(contact, channel, False, ConsentRecord.Source.RECIPIENT, detail=detail))
    log.info("unsubscribe (%s) contact=%s channel=%s: %d record(s)", detail, contact.pk, channel,
             sum(c.recorded for c in changes))
    return "unsubscribed"


def resubscribe(contact: Contact, channel: str) -> str:
    """The recipient's own grant: it lifts their own suppression (consent.may_lift). Only
    this contact: another contact at the same address may have said no on its own."""
    change = record_consent(contact, channel, True, ConsentRecord.Source.RECIPIENT, detail="unsubscribe:resubscribe")
    log.info("re-subscribe contact=%s channel=%s: %s", contact.pk, channel, change.outcome.value)
    return "resubscribed" if change.outcome is not Outcome.REFUSED else "refused"


def masked(address: str) -> str:
    """j***@example.com: enough for the recipient to recognise, little for anyone else."""
    name, at, domain = address.partition("@")
    if not at:
        return f"…{address[-4:]}" if address else ""
    return f"{name[:1]}***@{domain}"
