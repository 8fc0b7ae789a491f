"""`manage.py send_event`: the event API's validation and effects from the shell."""
from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from drip.management.commands.send_event import Command
from drip.models import Contact, Registration, Step

START = (timezone.now() + timedelta(days=3)).replace(microsecond=0).isoformat()
ENROLLED = {
    "name": "event.enrolled",
    "data": {
        "contactId": "c-shell", "eventId": "e-shell", "registrationId": "r-shell", "eventTitle": "Shell webinar",
        "scheduledAt": START, "contactEmail": "shell@example.com", "emailConsent": True,
    },
}


def send_event(argument: str) -> dict:
    out = io.StringIO()
    call_command("send_event", argument, stdout=out)
    return json.loads(out.getvalue())


def test_it_enrolls_from_a_json_argument(db):
    result = send_event(json.dumps(ENROLLED))
    assert result["accepted"] == 1
    assert result["results"][0]["registration"] == "created"
    assert Registration.objects.get().external_id == "r-shell"
    assert Step.objects.count() == 3


def test_it_reads_a_file_after_an_at_sign(db, tmp_path):
    path = tmp_path / "events.json"
    path.write_text(json.dumps([ENROLLED, {"name": "registration.cancelled", "data": {"registrationId": "r-shell"}}]))
    result = send_event(f"@{path}")
    assert [r["name"] for r in result["results"]] == ["event.enrolled", "registration.cancelled"]
    assert Registration.objects.get().status == "cancelled"


def test_it_reads_stdin_for_a_dash(db, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(ENROLLED)))
    assert send_event("-")["results"][0]["contactId"] == "c-shell"


def test_bad_input_is_an_error_naming_the_field_and_writes_nothing(db):
    bad = {**ENROLLED, "data": {**ENROLLED["data"], "scheduledAt": "2030-01-01T10:00:00"}}
    with pytest.raises(CommandError, match=r"^data\.scheduledAt: scheduledAt has no UTC offset"):
        call_command("send_event", json.dumps(bad))
    assert not Contact.objects.exists()


def test_an_unknown_id_is_an_error(db):
    with pytest.raises(CommandError, match=r"^data\.eventId: unknown event 'nope'"):
        call_command("send_event", '{"name": "event.cancelled", "data": {"eventId": "nope"}}')


def test_a_missing_file_is_an_error(db, tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("send_event", f"@{tmp_path / 'missing.json'}")


def test_from_the_command_line_errors_go_to_stderr_with_a_non_zero_exit(transactional_db, capsys):
    with pytest.raises(SystemExit) as exit_info:
        Command().run_from_argv(["manage.py", "send_event", '{"name": "event.enrolled",'])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("CommandError: malformed JSON")
    assert not Contact.objects.exists()
