"""Message templates: Jinja2 in a sandbox, StrictUndefined, HTML autoescaped, times shown
in the recipient's time zone. Templates live in templates/messages/<template_type>/:
subject.txt, body.txt, body.html (email) and sms.txt (SMS)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from django.conf import settings
from jinja2.sandbox import SandboxedEnvironment

from drip.domain.tokens import unsubscribe_url
from drip.models import Channel, Message

OPT_OUT_NOTICE = "Reply STOP to opt out."


class RenderError(Exception):
    """A template is missing or broken: permanent for this message, never retried."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def format_when(value: datetime, tz_name: str) -> str:
    """'Tue, Dec 1 at 3:00 PM EST' in the given IANA zone."""
    local = value.astimezone(ZoneInfo(tz_name))
    hour = local.hour % 12 or 12
    return f"{local:%a, %b} {local.day} at {hour}:{local:%M} {local:%p} {local.tzname()}"


@jinja2.pass_context
def _when_filter(context: jinja2.runtime.Context, value: datetime) -> str:
    return format_when(value, context["tz"])


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(settings.MESSAGE_TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        trim_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["when"] = _when_filter
    return env


def message_context(message: Message) -> dict[str, Any]:
    """Plain data only: the sandbox never sees a model instance (or its .delete())."""
    contact = message.contact
    registration = message.registration
    event = registration.event if registration else None
    tz = contact.timezone or (event.timezone if event else "UTC")
    links: dict[str, str] = {"base": settings.PUBLIC_BASE_URL, "unsubscribe": unsubscribe_url(contact.pk, contact.email)}
    context: dict[str, Any] = {
        "tz": tz,
        "contact": {
            "first_name": contact.first_name, "last_name": contact.last_name,
            "name": f"{contact.first_name} {contact.last_name}".strip() or contact.email,
            "email": contact.email, "phone": contact.phone,
        },
        "links": links,
        "sender": {"address": settings.DRIP_SENDER_ADDRESS, "email": settings.DEFAULT_FROM_EMAIL},
        "event": None,
        "registration": None,
    }
    if event is not None and registration is not None:
        # The registrant's own join link (Zoom's per-registrant links) wins over the event's.
        join_url = registration.join_url or event.join_url
        context["event"] = {
            "title": event.title, "starts_at": event.starts_at, "timezone": event.timezone,
            "join_url": join_url, "completed_at": event.completed_at,
            "recording_url": event.recording_url, "slides_url": event.slides_url,
        }
        context["registration"] = {"id": registration.external_id, "attended": registration.attended}
        links["join"] = join_url
    return context


def render_message(message: Message, numbers_reached: set[str] | None = None) -> Rendered:
    """The message's subject, text and html. `numbers_reached` (numbers_reached_before, for a
    batch at once) says which numbers an SMS already reached; without it, it is asked here.
    What the step task rendered ahead (render_ahead) is used when it was rendered from the
    same data as now; anything changed since (the event, the contact, the templates, the
    settings shown in messages) renders it again."""
    context = message_context(message)
    if message.rendered_from and message.rendered_from == _fingerprint(message, context):
        rendered = Rendered(message.subject, message.body, message.html)
    else:
        rendered = _render_templates(message, context)
    if message.channel == Channel.SMS:
        # Decided now, not ahead: whether an SMS already reached the number is a fact of
        # the moment of sending.
        return Rendered("", with_opt_out_notice(message, rendered.text, numbers_reached), "")
    return rendered


def render_ahead(message: Message) -> None:
    """Render a message the step task has just planned, ahead of its due time (DRIP_STEP_LEAD),
    so that at the due instant only the send is left; the fingerprint of what it was rendered
    from goes with it (render_message checks it). A template that cannot render is left to
    the sender, which fails the message with the reason."""
    context = message_context(message)
    try:
        rendered = _render_templates(message, context)
    except Exception:  # RenderError or a bug: the sender renders it again and records why
        return
    message.subject, message.body, message.html = rendered.subject, rendered.text, rendered.html
    message.rendered_from = _fingerprint(message, context)


def _render_templates(message: Message, context: dict[str, Any]) -> Rendered:
    """The templates alone: an SMS without the opt-out notice (render_message adds it)."""
    env = environment()
    folder = message.template_type
    try:
        if message.channel == Channel.SMS:
            return Rendered("", _render(env, f"{folder}/sms.txt", context).strip(), "")
        subject = " ".join(_render(env, f"{folder}/subject.txt", context).split())
        text = _render(env, f"{folder}/body.txt", context).rstrip() + "\n\n" + _render(env, "_footer.txt", context)
        html = with_html_footer(_render(env, f"{folder}/body.html", context), env, context)
        return Rendered(subject, text, html)
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"template missing: templates/messages/{exc.name}") from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {folder} ({message.channel}): {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {folder} ({message.channel}) is broken: {exc}") from None


def _fingerprint(message: Message, context: dict[str, Any]) -> str:
    """What a rendering depends on: the template set, the message's templates and every value
    the templates can see. Two renderings with the same fingerprint are the same text."""
    templates = templates_version(str(settings.MESSAGE_TEMPLATES_DIR))
    seen = json.dumps([templates, message.template_type, message.channel, context], sort_keys=True, default=str)
    return hashlib.blake2b(seen.encode(), digest_size=16).hexdigest()


@lru_cache(maxsize=4)
def templates_version(folder: str) -> str:
    """The message templates as this process found them (names, sizes, modification times):
    a rendering made before a deploy that changed them is made again."""
    root = Path(folder)
    files = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())
    return hashlib.blake2b(repr(files).encode(), digest_size=16).hexdigest()


def _render(env: SandboxedEnvironment, name: str, context: dict) -> str:
    return env.get_template(name).render(context)


def with_html_footer(html: str, env: SandboxedEnvironment, context: dict) -> str:
    """_base.html carries the footer; a template that does not extend it still gets one,
    since no email may go out without its unsubscribe link (CAN-SPAM, RFC 8058)."""
    if context["links"]["unsubscribe"] in html:
        return html
    footer = _render(env, "_footer.html", context)
    head, body_end, tail = html.rpartition("</body>")
    return f"{head}{footer}{body_end}{tail}" if body_end else html + footer


def with_opt_out_notice(message: Message, text: str, numbers_reached: set[str] | None = None) -> str:
    """The first SMS Drip sends to a number says how to opt out (CTIA); later ones need not
    spend a segment on it. "First": no earlier SMS to the number reached the provider."""
    if OPT_OUT_NOTICE.lower() in text.lower():
        return text
    number = sms_number(message)
    if numbers_reached is None:
        numbers_reached = numbers_reached_before([number], exclude=message.pk)
    return text if number in numbers_reached else f"{text} {OPT_OUT_NOTICE}"


def sms_number(message: Message) -> str:
    return message.contact.phone or message.to


def numbers_reached_before(numbers: Iterable[str], exclude: int | None = None) -> set[str]:
    """Which of these numbers an SMS of ours already reached (sent or delivered): one query
    for a whole send batch."""
    earlier = Message.objects.filter(channel=Channel.SMS, to__in=set(numbers), status__in=(Message.Status.SENT, Message.Status.DELIVERED))
    if exclude is not None:
        earlier = earlier.exclude(pk=exclude)
    return set(earlier.order_by().values_list("to", flat=True).distinct())
