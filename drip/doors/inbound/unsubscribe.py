"""RFC 8058 one-click unsubscribe, and the page behind the footer link.

POST (the mailbox provider's one-click, or the page's button) suppresses the address the
link was sent to; GET only shows the page, since mail scanners fetch every link in a
message. The signed token is the only credential: no cookie, no login, no CSRF token (a
one-click POST carries none). Re-subscribing is the page's own POST: it carries a value only
the page gives out, bound to the link and to the opt-out it lifts, so it works once and no
other site can forge it.
"""
from __future__ import annotations

import hashlib
import logging

from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from drip.domain.consent import active_suppression, lift_suppression, suppress
from drip.domain.tokens import BadToken, Unsubscribe, address_tag, read_token
from drip.models import ConsentRecord, Contact, Message, Suppression
from drip.support.logs import mask_address

log = logging.getLogger("drip.inbound")
TEMPLATE = "inbound/unsubscribe.html"
RESUBSCRIBE_SALT = "drip.inbound.resubscribe"
RESUBSCRIBE_MAX_AGE = 3600  # seconds a page's re-subscribe button stays good


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        link = read_token(token)
    except BadToken:
        # Not the reason: a signature error quotes the signature, half a working link.
        log.warning("unsubscribe with a bad token refused")
        return render(request, TEMPLATE, {"invalid": True}, status=400)
    contact = Contact.objects.filter(pk=link.contact_id).first()
    if contact is None:
        return render(request, TEMPLATE, {"invalid": True}, status=404)
    address = link_address(contact, link)
    notice = ""
    if request.method == "POST":
        if request.POST.get("action") == "resubscribe":
            notice = resubscribe(token, link, address, request.POST.get("again", ""))
        else:
            notice = revoke(request, link, address)
    suppression = active_suppression(link.channel, address) if address else None
    mine = suppression is not None and suppression.source == Suppression.Source.RECIPIENT
    context = {
        "channel": link.channel, "address": mask_address(address), "notice": notice,
        "subscribed": bool(address) and suppression is None,
        "again": resubscribe_value(token, suppression) if mine and suppression else "",
    }
    # 200 with the page, never a redirect: a one-click POST that is redirected is lost.
    return render(request, TEMPLATE, context)


def link_address(contact: Contact, link: Unsubscribe) -> str:
    """The address the link was sent to: the contact's current one when the link names it,
    else one an earlier message of this contact went to; "" when neither (nothing to do)."""
    current = contact.address_for(link.channel)
    if not link.address_tag or address_tag(link.channel, current) == link.address_tag:
        # A link from before tokens named the address can only mean the current one.
        return current
    sent_to = Message.objects.filter(contact=contact, channel=link.channel).exclude(to="").values_list("to", flat=True)
    return next((a for a in sent_to.distinct() if address_tag(link.channel, a) == link.address_tag), "")


def revoke(request: HttpRequest, link: Unsubscribe, address: str) -> str:
    one_click = request.POST.get("List-Unsubscribe") == "One-Click"
    detail = "unsubscribe:one-click" if one_click else "unsubscribe:page"
    if not address:
        log.info("unsubscribe (%s) contact=%s: the link's address is no longer known; nothing to do", detail, link.contact_id)
        return "unsubscribed"
    suppression = suppress(link.channel, address, Suppression.Source.RECIPIENT, detail=detail)
    log.info("unsubscribe (%s) contact=%s channel=%s: suppression=%s", detail, link.contact_id, link.channel,
             suppression.pk if suppression else None)
    return "unsubscribed"


def _bound_to(token: str, suppression: Suppression) -> str:
    return f"{hashlib.sha256(token.encode()).hexdigest()[:16]}.{suppression.pk}"


def resubscribe_value(token: str, suppression: Suppression) -> str:
    return signing.TimestampSigner(salt=RESUBSCRIBE_SALT).sign(_bound_to(token, suppression))


def resubscribe(token: str, link: Unsubscribe, address: str, value: str) -> str:
    """The recipient's own undo: lifts their own opt-out of this address, nothing else (a
    bounce or complaint stays until an operator lifts it)."""
    suppression = active_suppression(link.channel, address) if address else None
    if suppression is None:
        return ""
    try:
        bound = signing.TimestampSigner(salt=RESUBSCRIBE_SALT).unsign(value, max_age=RESUBSCRIBE_MAX_AGE)
    except signing.BadSignature:
        log.warning("re-subscribe without this page's value refused contact=%s", link.contact_id)
        return "refused"
    if bound != _bound_to(token, suppression):
        return "refused"  # used already (that opt-out is lifted), or made for another link
    lifted = lift_suppression(suppression, "recipient", "re-subscribed on the unsubscribe page", ConsentRecord.Source.RECIPIENT)
    log.info("re-subscribe contact=%s channel=%s: %s", link.contact_id, link.channel, "lifted" if lifted else "refused")
    return "resubscribed" if lifted else "refused"
