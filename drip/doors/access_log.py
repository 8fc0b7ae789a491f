"""Gunicorn's access log without secrets (Procfile: `--logger-class drip.doors.access_log.RedactingLogger`).

The access log records each request's path, and an unsubscribe link carries its signed token
in the path (/u/<token>/): whoever reads the log could unsubscribe (or re-subscribe) anybody.
The token is replaced in the request line, the path, the referer (the page posts to itself)
and any other logged value; credentials headers are never logged.
"""
from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from drip.support.logs import redact_tokens

SECRET_HEADERS = ("{authorization}i", "{cookie}i", "{x-twilio-signature}i", "{set-cookie}o")


class RedactingLogger(Logger):
    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for name, value in atoms.items():
            if isinstance(value, str):
                atoms[name] = redact_tokens(value)
        for name in SECRET_HEADERS:
            if name in atoms:
                atoms[name] = "[redacted]"
        return atoms
