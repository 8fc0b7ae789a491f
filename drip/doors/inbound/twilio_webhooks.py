"""Twilio's two callbacks: status reports for the SMS we sent (`/webhooks/twilio/status/`)
and the SMS recipients send us (`/webhooks/twilio/inbound/`): STOP, START, HELP, and
everything else for the operators' inbox. Both are signed by Twilio; nothing unsigned is
read, let alone written."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden, QueryDict
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from drip.domain.consent import contacts_at, lift_for_recipient, suppress
from drip.domain.validation import validate_webhook_address
from drip.doors.inbound.reports import Report, record_report
from drip.models import Channel, DeliveryReport, InboundSms, Message, Suppression

log = logging.getLogger("drip.inbound")
Kind = DeliveryReport.Kind
InboundKind = InboundSms.Kind

# Twilio's error codes on undelivered / failed reports, and what they mean to an operator.
ERROR_MEANINGS = {
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable destination handset",
    "30004": "message blocked (the recipient or their carrier blocks it)",
    "30005": "unknown destination handset (the number does not exist)",
    "30006": "landline or unreachable carrier",
    "30007": "message filtered by the carrier",
    "30008": "unknown error",
    "30009": "missing segment",
    "30010": "message price exceeds max price",
    "30034": "message from an unregistered number (US A2P 10DLC)",
    "21610": "recipient has replied STOP to this sender",
}
# These say the number cannot (or must not) receive SMS: suppress it. 30003 (phone off)
# and 30008 (unknown) pass; they are recorded only.
SUPPRESSING_ERRORS = {"30004", "30005", "30006", "21610"}
STATUS_KINDS = {
    "accepted": Kind.QUEUED, "scheduled": Kind.QUEUED, "queued": Kind.QUEUED, "sending": Kind.QUEUED,
    "sent": Kind.SENT, "delivered": Kind.DELIVERED, "read": Kind.OPENED,
    "undelivered": Kind.UNDELIVERED, "failed": Kind.FAILED, "canceled": Kind.FAILED,
}

OPT_OUT_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
# Undo this number's own STOP, nothing more; "yes" is no keyword (people answer yes to anything).
OPT_IN_WORDS = {"START", "UNSTOP"}
HELP_WORDS = {"HELP", "INFO"}
# Twilio's Advanced Opt-Out names the keyword class itself (its own, configurable lists).
OPT_OUT_TYPES = {"STOP": InboundKind.OPT_OUT, "START": InboundKind.OPT_IN, "HELP": InboundKind.HELP}


def signature_is_valid(request: HttpRequest) -> bool:
    """Against PUBLIC_BASE_URL + path + query: behind a TLS proxy the request Django sees
    is http://internal-host/..., while Twilio signed the public https URL."""
    token = settings.TWILIO_AUTH_TOKEN
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature:
        return False
    url = settings.PUBLIC_BASE_URL + request.get_full_path()
    return bool(RequestValidator(token).validate(url, request.POST, signature))


def twilio_signed(view: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    @csrf_exempt
    @require_POST
    @wraps(view)
    def checked(request: HttpRequest) -> HttpResponse:
        if not settings.TWILIO_AUTH_TOKEN:
            # Nothing can be verified: say what the operator must set, not "bad signature".
            log.warning("twilio webhook %s refused: TWILIO_AUTH_TOKEN is not set, so no signature can be checked", request.path)
            return HttpResponseForbidden("TWILIO_AUTH_TOKEN is not configured")
        if not signature_is_valid(request):
            log.warning("twilio webhook %s refused: missing or invalid X-Twilio-Signature", request.path)
            return HttpResponseForbidden("invalid Twilio signature")
        refusal = malformed(request.POST)
        if refusal:
            log.warning("twilio webhook %s refused: %s", request.path, refusal)
            return HttpResponseBadRequest(refusal)
        return view(request)

    return checked


SID = re.compile(r"[A-Za-z0-9]{2,64}")  # Twilio's are SM + 32 hex; letters and digits is the rule that matters


def malformed(params: QueryDict) -> str:
    """Signed is not well-formed (a misconfigured proxy, a test console): what the rows store
    must still be numbers, sids and codes, or the request is refused naming the field."""
    for name in ("From", "To"):
        value = params.get(name, "")
        if value:
            try:
                validate_webhook_address(value)
            except ValidationError as exc:
                return f"{name} {exc.messages[0]}"
    for name in ("MessageSid", "SmsSid"):
        sid = params.get(name, "")
        if sid and not SID.fullmatch(sid):
            return f"{name} is not a Twilio message sid (letters and digits)"
    code = params.get("ErrorCode", "")
    if code and not code.isdigit():
        return "ErrorCode is not a number"
    return ""


def twiml(reply: str = "") -> HttpResponse:
    response = MessagingResponse()
    if reply:
        response.message(reply)
    return HttpResponse(str(response), content_type="text/xml")


# --- status callbacks --------------------------------------------------------------------

@twilio_signed
def status_callback(request: HttpRequest) -> HttpResponse:
    params = request.POST
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    message = find_sms(request.GET.get("m", ""), sid)
    if message is None:
        log.warning("twilio %s report for an unknown message (sid %s, m=%s); ignored", status, sid, request.GET.get("m"))
        return HttpResponse(status=204)
    record_report(message, status_report(message, params.dict(), sid, status))
    return HttpResponse(status=204)


def find_sms(message_id: str, sid: str) -> Message | None:
    """By the Message id in the callback URL (there before the sender recorded the sid),
    else by the sid."""
    sms = Message.objects.filter(channel=Channel.SMS).select_related("contact")
    if message_id.isdigit():
        found = sms.filter(pk=int(message_id)).first()
        if found is not None and (not found.provider_message_id or not sid or found.provider_message_id == sid):
            return found
    return sms.filter(provider_message_id=sid).first() if sid else None


def status_report(message: Message, params: dict[str, str], sid: str, status: str) -> Report:
    code = (params.get("ErrorCode") or "").strip()
    detail = f"twilio error {code}: {ERROR_MEANINGS.get(code, 'see twilio.com/docs/api/errors/' + code)}" if code else status
    return Report(
        channel=Channel.SMS, kind=STATUS_KINDS.get(status, Kind.OTHER), provider="twilio",
        occurred_at=timezone.now(),  # Twilio's status callbacks carry no time of their own
        detail=detail, payload=params, address=params.get("To", ""),
        suppress=f"twilio:{code}" if code in SUPPRESSING_ERRORS else "",
        # Twilio retries a callback it got no answer for: the same sid, status and code.
        dedupe_key=f"twilio:{sid or message.pk}:{status}:{code}",
    )


# --- inbound SMS ---------------------------------------------------------------------------

def classify(body: str, opt_out_type: str = "") -> tuple[str, str]:
    """(kind, keyword): the whole message, trimmed, any case, is the keyword; Twilio's
    OptOutType wins when present."""
    word = body.strip().strip(".!").strip().upper()
    by_twilio = OPT_OUT_TYPES.get(opt_out_type.strip().upper())
    if by_twilio is not None:
        return by_twilio, word or opt_out_type.strip().upper()
    if word in OPT_OUT_WORDS:
        return InboundKind.OPT_OUT, word
    if word in OPT_IN_WORDS:
        return InboundKind.OPT_IN, word
    if word in HELP_WORDS:
        return InboundKind.HELP, word
    return InboundKind.OTHER, ""


@twilio_signed
def inbound_sms(request: HttpRequest) -> HttpResponse:
    params = request.POST
    # PostgreSQL text holds no NUL; the rest of a person's message is kept as they wrote it.
    sender, body = params.get("From", "").strip(), params.get("Body", "").replace("\x00", "")
    kind, keyword = classify(body, params.get("OptOutType", ""))
    stored = store_inbound(params.dict(), sender, body, kind)
    if stored is None:
        log.info("repeated inbound sms %s ignored", params.get("MessageSid"))
    elif kind == InboundKind.OPT_OUT:
        suppression = suppress(Channel.SMS, sender, Suppression.Source.RECIPIENT, detail=f"twilio:{keyword}")
        log.info("inbound %s: sms suppression=%s", keyword, suppression.pk if suppression else None)
    elif kind == InboundKind.OPT_IN:
        lifted = lift_for_recipient(Channel.SMS, sender, detail=f"twilio:{keyword}")
        log.info("inbound %s: %s", keyword, "the number's own opt-out lifted" if lifted else "nothing of the recipient's to lift")
    if kind == InboundKind.HELP:
        return twiml(settings.DRIP_SMS_HELP_TEXT)
    # STOP / START confirmations are Twilio's own (its opt-out handling sends them).
    return twiml()


def store_inbound(params: dict[str, str], sender: str, body: str, kind: str) -> InboundSms | None:
    """The row, or None when Twilio sent this message (the same sid) before."""
    keyword = kind != InboundKind.OTHER
    try:
        with transaction.atomic():
            return InboundSms.objects.create(
                from_number=sender[:32], to_number=params.get("To", "")[:32], body=body,
                provider_sid=(params.get("MessageSid") or params.get("SmsSid") or None), kind=kind,
                handled=keyword, opted_out=kind == InboundKind.OPT_OUT,
                handled_by="keyword" if keyword else "", handled_at=timezone.now() if keyword else None,
            )
    except IntegrityError:
        return None


def record_as_opt_out(inbound: InboundSms, operator: str) -> int:
    """An operator read "please stop texting me": the recipient's own opt-out (a
    suppression only they, or an operator with a reason, can lift). Returns contacts at it."""
    suppress(
        Channel.SMS, inbound.from_number, Suppression.Source.RECIPIENT,
        detail=f"inbound-sms:{inbound.pk}", reason=f"recorded by {operator} from the message: {inbound.body[:500]}",
    )
    InboundSms.objects.filter(pk=inbound.pk).update(
        handled=True, opted_out=True, handled_by=operator[:150], handled_at=timezone.now()
    )
    return len(contacts_at(Channel.SMS, inbound.from_number))
