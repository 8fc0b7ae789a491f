"""`python manage.py send_event '<json>'` (or `@file.json`, or `-` for stdin): what
`POST /api/events` does, from the shell, without a token."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from drip.doors.api import count_by_name
from drip.doors.intake.apply import handle_body
from drip.support.errors import FieldError
from drip.support.logs import audit, shell_user


def read_payload(argument: str) -> str:
    if argument == "-":
        return sys.stdin.read()
    if argument.startswith("@"):
        path = Path(argument[1:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from None
    return argument


class Command(BaseCommand):
    help = (
        "Send one event {\"name\": ..., \"data\": {...}} or a JSON list of them, as POST /api/events would. "
        "Prints the result as JSON; bad input is an error naming the field, and nothing is written."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("payload", help="the JSON itself, @path/to/file.json, or - to read stdin")

    def handle(self, *args: Any, payload: str, **options: Any) -> None:
        try:
            result = handle_body(read_payload(payload))
        except FieldError as exc:
            raise CommandError(f"{exc.field}: {exc}" if exc.field else str(exc)) from None
        audit.info("send_event: OS user %s: accepted %d event(s): %s", shell_user(), result["accepted"], count_by_name(result))
        self.stdout.write(json.dumps(result, indent=2))
