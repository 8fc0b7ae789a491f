"""Loggers whose every line carries the registration, step and message ids, so an operator
can follow one registration with a single grep (`grep registration=42`); the audit logger;
and the masks for the rare line that must show an address to a person."""
from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
from typing import Any


class IdsAdapter(logging.LoggerAdapter):
    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        ids = " ".join(f"{k}={v}" for k, v in (self.extra or {}).items() if v is not None)
        return f"{msg} [{ids}]", kwargs


def step_log(step: Any, name: str = "drip.steps") -> IdsAdapter:
    return IdsAdapter(logging.getLogger(name), {"registration": step.registration_id, "step": step.id})


def message_log(message: Any, name: str = "drip.messages") -> IdsAdapter:
    return IdsAdapter(
        logging.getLogger(name),
        {"registration": message.registration_id, "step": message.step_id, "message": message.id},
    )


# --- who did it (docs/security.md): the API's token and the shell's user, by name -------
# Every change made through the API or a management command leaves one line here, with the
# caller's name: the console's own changes are in Django's admin log.
audit = logging.getLogger("drip.audit")


def token_fingerprint(token: str, kind: str = "producer token") -> str:
    """How a log names a bearer token: the first 8 hex of its SHA-256, never the token."""
    return f"{kind} sha256:{hashlib.sha256(token.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def shell_user() -> str:
    """The OS user running a management command (a container may have no passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


# --- personal data in logs: ids, never addresses; masked where a person must read one -------


def mask_email(address: str) -> str:
    """j***@example.com: enough to tell two addresses apart in a log, not to write to one."""
    local, at, domain = (address or "").rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    """…0123: the last four digits only."""
    digits = "".join(c for c in number or "" if c.isdigit())
    return f"…{digits[-4:]}" if len(digits) > 4 else "…"


def mask_address(address: str) -> str:
    """An email address or a phone number, masked as its kind."""
    return mask_email(address) if "@" in (address or "") else mask_phone(address)


# --- signed tokens in URLs ----------------------------------------------------------------
# The unsubscribe link's token (drip/urls.py: u/<token>/) unsubscribes whoever it names: it
# never reaches a log, neither gunicorn's access log (drip/doors/access_log.py) nor Django's
# "Bad Request: /u/..." lines (the RedactTokens filter in settings.LOGGING).
TOKEN_IN_PATH = re.compile(r"(/u/)[^/?#\s\"']+")


def redact_tokens(text: str) -> str:
    return TOKEN_IN_PATH.sub(r"\1[token]", text)


# A provider's error text quotes the recipient ("The 'To' number +14155550123 is not…"):
# every address or number that reaches a log line is masked there, whoever wrote the line.
EMAIL_IN_TEXT = re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
PHONE_IN_TEXT = re.compile(r"(?<![\w+])\+\d{7,15}\b")


def redact(text: str) -> str:
    """Tokens out, addresses and numbers masked."""
    text = EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group(0)), redact_tokens(text))
    return PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)


class RedactTokens(logging.Filter):
    """Every handler's filter (settings.LOGGING): no token, address or number in a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True
