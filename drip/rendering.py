"""Message templates: Jinja2 in a sandbox, StrictUndefined, HTML autoescaped, times shown
in the recipient's time zone. Templates live in templates/messages/<template_type>/:
subject.txt, body.txt, body.html (email) and sms.txt (SMS)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import jinja2
from django.conf import settings
from jinja2.sandbox import SandboxedEnvironment

from .models import Channel, Message


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


def message_context(message: Message) -> dict:
    """Plain data only: the sandbox never sees a model instance (or its .delete())."""
    contact = message.contact
    registration = message.registration
    event = registration.event if registration else None
    tz = contact.timezone or (event.timezone if event else "UTC")
    context = {
        "tz": tz,
        "contact": {
            "first_name": contact.first_name, "last_name": contact.last_name,
            "name": f"{contact.first_name} {contact.last_name}".strip() or contact.email,
            "email": contact.email, "phone": contact.phone,
        },
        "links": {"base": settings.PUBLIC_BASE_URL},
        "event": None,
        "registration": None,
    }
    if event is not None:
        context["event"] = {
            "title": event.title, "starts_at": event.starts_at, "timezone": event.timezone,
            "join_url": event.join_url, "completed_at": event.completed_at,
        }
        context["registration"] = {"id": registration.external_id, "attended": registration.attended}
        context["links"]["join"] = event.join_url
    return context


def render_message(message: Message) -> Rendered:
    env = environment()
    context = message_context(message)
    folder = message.template_type
    try:
        if message.channel == Channel.SMS:
            return Rendered("", _render(env, f"{folder}/sms.txt", context).strip(), "")
        subject = " ".join(_render(env, f"{folder}/subject.txt", context).split())
        return Rendered(subject, _render(env, f"{folder}/body.txt", context), _render(env, f"{folder}/body.html", context))
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"template missing: templates/messages/{exc.name}") from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {folder} ({message.channel}): {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {folder} ({message.channel}) is broken: {exc}") from None


def _render(env: SandboxedEnvironment, name: str, context: dict) -> str:
    return env.get_template(name).render(context)
