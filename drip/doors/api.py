"""The HTTP door for producers: `POST /api/events` and `GET /api/events/schema`.
Authentication, size and method are decided here; parsing and applying what producers send
is drip.doors.intake."""
from __future__ import annotations

import logging
from collections import Counter

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from drip.doors.intake.apply import handle_body
from drip.doors.intake.parse import json_schema
from drip.support.bearer import token_matches
from drip.support.errors import FieldError
from drip.support.logs import audit, token_fingerprint

log = logging.getLogger("drip.api")
MAX_BODY_BYTES = 1024 * 1024


def error(status: int, message: str, field: str | None = None) -> JsonResponse:
    return JsonResponse({"error": message, "field": field}, status=status)


def count_by_name(result: dict) -> str:
    """The events by name and count ("event.enrolled x3, event.completed"): a long list stays
    one short log line."""
    names = Counter(r["name"] for r in result["results"])
    return ", ".join(f"{n} x{c}" if c > 1 else n for n, c in names.items()) or "nothing"


def declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


@csrf_exempt  # producers are servers with a bearer token, not browsers with a session
def events(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        response = error(405, f"{request.method} is not allowed here: POST the events")
        response["Allow"] = "POST"
        return response
    if not settings.DRIP_API_TOKEN:
        return error(503, "the event API is disabled: set DRIP_API_TOKEN to enable it")
    if not token_matches(request, settings.DRIP_API_TOKEN):
        response = error(401, "missing or wrong bearer token (Authorization: Bearer $DRIP_API_TOKEN)")
        response["WWW-Authenticate"] = 'Bearer realm="drip"'
        return response
    # Checked before reading, so an oversized body is never held in memory.
    too_big = error(413, f"the body is over {MAX_BODY_BYTES // 1024 // 1024} MB; send the events in smaller batches")
    if declared_length(request) > MAX_BODY_BYTES:
        return too_big
    try:
        body = request.body
    except RequestDataTooBig:
        return too_big
    if len(body) > MAX_BODY_BYTES:
        return too_big
    caller = token_fingerprint(settings.DRIP_API_TOKEN)
    try:
        result = handle_body(body)
    except FieldError as exc:
        # The field, not the message: the message quotes the value, which may be an address.
        log.info("event API refused a request from %s: bad %s", caller, exc.field or "body")
        return JsonResponse(exc.as_dict(), status=400)
    except OperationalError:
        # Our trouble, not the client's, and passing: nothing was written, so a retry is safe.
        log.exception("event API: database unavailable")
        response = error(503, "the database is busy or unavailable; nothing was written, retry shortly")
        response["Retry-After"] = "1"
        return response
    audit.info("event API: %s: accepted %d event(s): %s", caller, result["accepted"], count_by_name(result))
    return JsonResponse(result, status=202)


@require_GET
def events_schema(request: HttpRequest) -> JsonResponse:
    """The JSON Schema of every accepted body, generated from the models that validate it,
    so producers can check a payload before sending it. Public: it holds no data."""
    return JsonResponse(json_schema(), json_dumps_params={"indent": 2})
