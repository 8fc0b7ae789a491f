"""Quiet hours for marketing SMS and the frequency cap for marketing messages: the pure
window arithmetic, the rules, and both through a real worker and the provider stub."""
from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from drip.domain.pacing import FrequencyCap, QuietHours, parse_frequency_cap, parse_quiet_hours
from drip.domain.policy import quiet_hours_end
from drip.models import Channel, Message, Purpose
from drip.timer.publish import enqueue_sends
from drip.timer.scheduler import wake_held_messages
from tests.factories import make_contact, make_event, register_quietly
from tests.helpers import wait_until

NY = "America/New_York"
NIGHT = QuietHours(time(21, 0), time(8, 0))


def at(zone: str, year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone))


def test_the_window_holds_a_late_evening_until_the_next_morning():
    end = NIGHT.ends_after(at(NY, 2026, 12, 1, 22, 30), NY)
    assert end == at(NY, 2026, 12, 2, 8, 0)


def test_the_window_holds_an_early_morning_until_that_morning():
    assert NIGHT.ends_after(at(NY, 2026, 12, 2, 7, 59), NY) == at(NY, 2026, 12, 2, 8, 0)


def test_the_window_lets_the_day_through():
    assert NIGHT.ends_after(at(NY, 2026, 12, 2, 8, 0), NY) is None
    assert NIGHT.ends_after(at(NY, 2026, 12, 2, 20, 59), NY) is None


def test_the_window_is_read_in_the_recipients_zone():
    # 03:00 UTC is 22:00 in New York (inside) and 12:00 in Tokyo (outside).
    now = at("UTC", 2026, 12, 2, 3, 0)
    assert NIGHT.ends_after(now, NY) == at(NY, 2026, 12, 2, 8, 0)
    assert NIGHT.ends_after(now, "Asia/Tokyo") is None


def test_a_window_within_one_day_and_the_dst_change():
    lunch = QuietHours(time(12, 0), time(13, 30))
    assert lunch.ends_after(at(NY, 2026, 6, 1, 12, 15), NY) == at(NY, 2026, 6, 1, 13, 30)
    assert lunch.ends_after(at(NY, 2026, 6, 1, 13, 30), NY) is None
    # The night clocks go back (2026-11-01): the morning end is still 08:00 local, EST.
    end = NIGHT.ends_after(at(NY, 2026, 10, 31, 23, 0), NY)
    assert end is not None and end.utcoffset() == timedelta(hours=-5) and (end.hour, end.minute) == (8, 0)


@pytest.mark.parametrize("value", ["21-8", "25:00-08:00", "21:00-21:00", "21:00 to 08:00", ""])
def test_a_bad_quiet_hours_setting_names_the_variable(value):
    with pytest.raises(ImproperlyConfigured, match="DRIP_SMS_QUIET_HOURS"):
        parse_quiet_hours(value)


def test_the_settings_parse_and_off_disables():
    assert parse_quiet_hours("off") is None and parse_frequency_cap("OFF") is None
    assert parse_quiet_hours(" 22:30 - 07:15 ") == QuietHours(time(22, 30), time(7, 15))
    assert parse_frequency_cap("3/24h") == FrequencyCap(3, timedelta(hours=24))
    assert parse_frequency_cap("5/7d") == FrequencyCap(5, timedelta(days=7))
    assert parse_frequency_cap("5/7d").describe() == "5 per 7 d"
    for bad in ("3", "0/24h", "3/0h", "3/24m", "three/24h"):
        with pytest.raises(ImproperlyConfigured, match="DRIP_FREQUENCY_CAP"):
            parse_frequency_cap(bad)


def marketing(contact, channel: str = Channel.SMS, template: str = "reengagement", **fields) -> Message:
    registration = register_quietly(contact, make_event(starts_in=-3 * 3600))
    return Message.objects.create(
        contact=contact, registration=registration, channel=channel, template_type=template, purpose=Purpose.MARKETING,
        to=contact.address_for(channel), next_attempt_at=timezone.now(), **fields,
    )


def night_zone_now() -> str:
    """A real zone where it is the middle of the night right now (the hold is real time, not
    frozen), so the morning is further away than the enqueue horizon."""
    for offset in range(-12, 15):
        zone = f"Etc/GMT{-offset:+d}" if offset else "UTC"
        local = timezone.now().astimezone(ZoneInfo(zone)).time()
        if NIGHT.contains(local) and not time(6, 0) <= local < time(8, 0):  # the morning hours away
            return zone
    raise AssertionError("some zone is always at night")


def test_only_marketing_sms_is_held(db, settings):
    settings.DRIP_SMS_QUIET_HOURS = NIGHT
    contact = make_contact(timezone=night_zone_now())
    sms = marketing(contact)
    assert quiet_hours_end(sms, timezone.now()) is not None
    email = marketing(contact, channel=Channel.EMAIL)
    assert quiet_hours_end(email, timezone.now()) is None
    sms.purpose = Purpose.TRANSACTIONAL
    assert quiet_hours_end(sms, timezone.now()) is None
    settings.DRIP_SMS_QUIET_HOURS = None
    sms.purpose = Purpose.MARKETING
    assert quiet_hours_end(sms, timezone.now()) is None


def test_a_marketing_sms_in_quiet_hours_waits_in_the_database_and_the_dispatcher_wakes_it(worker, providers, settings):
    settings.DRIP_SMS_QUIET_HOURS = NIGHT
    contact = make_contact(timezone=night_zone_now())
    sms, email = marketing(contact), marketing(contact, channel=Channel.EMAIL, template="nurture")
    enqueue_sends([sms.pk, email.pk], batch_size=1)
    providers.wait_for(1)  # the email is not held
    wait_until(lambda: Message.objects.get(pk=sms.pk).error.startswith("held for quiet hours"))
    sms.refresh_from_db()
    assert (sms.status, sms.held_until, sms.attempts) == (Message.Status.QUEUED, sms.next_attempt_at, 0)
    local_end = sms.next_attempt_at.astimezone(ZoneInfo(contact.timezone))
    assert (local_end.hour, local_end.minute, local_end.second) == (8, 0, 0) and sms.next_attempt_at > timezone.now()
    assert contact.timezone in sms.error and [r.kind for r in providers.messages()] == ["email"]
    assert wake_held_messages() == 0  # the morning is further away than the enqueue horizon
    # Morning comes (the row is the timer: move it), and the dispatcher wakes it exactly once.
    settings.DRIP_SMS_QUIET_HOURS = None
    Message.objects.filter(pk=sms.pk).update(next_attempt_at=timezone.now())
    assert wake_held_messages() == 1 and wake_held_messages() == 0
    providers.wait_for(2)
    # The stub records the request before the sender writes its outcome.
    wait_until(lambda: Message.objects.get(pk=sms.pk).status == Message.Status.SENT)
    assert [r.kind for r in providers.messages()].count("sms") == 1


def test_a_hold_that_would_pass_the_expiry_skips_with_the_reason(worker, providers, settings):
    settings.DRIP_SMS_QUIET_HOURS = NIGHT
    contact = make_contact(timezone=night_zone_now())
    sms = marketing(contact, expires_at=timezone.now() + timedelta(minutes=5))
    enqueue_sends([sms.pk])
    wait_until(lambda: Message.objects.get(pk=sms.pk).status == Message.Status.SKIPPED)
    sms.refresh_from_db()
    assert sms.error.startswith("quiet hours until") and "past its expiry" in sms.error
    assert providers.messages() == []


def test_transactional_sms_goes_out_in_quiet_hours(worker, providers, settings):
    settings.DRIP_SMS_QUIET_HOURS = NIGHT
    contact = make_contact(timezone=night_zone_now())
    sms = marketing(contact, template="reminder_1h")
    Message.objects.filter(pk=sms.pk).update(purpose=Purpose.TRANSACTIONAL)
    enqueue_sends([sms.pk])
    providers.wait_for(1)


def test_the_frequency_cap_holds_across_racing_workers(worker, providers, settings):
    """Ten contacts, three marketing emails each, every message its own task on four worker
    threads at once, a cap of 2 per day: each contact gets exactly two."""
    settings.DRIP_FREQUENCY_CAP = FrequencyCap(2, timedelta(hours=24))
    settings.DRIP_SMS_QUIET_HOURS = None
    contacts = [make_contact() for _ in range(10)]
    messages = [marketing(c, channel=Channel.EMAIL, template="nurture") for c in contacts for _ in range(3)]
    # A transactional email never counts and is never capped.
    receipt = marketing(contacts[0], channel=Channel.EMAIL, template="nurture")
    Message.objects.filter(pk=receipt.pk).update(purpose=Purpose.TRANSACTIONAL)
    enqueue_sends([m.pk for m in [*messages, receipt]], batch_size=1)
    wait_until(lambda: not Message.objects.filter(status__in=[Message.Status.QUEUED, Message.Status.SENDING]).exists())
    for contact in contacts:
        mine = Message.objects.filter(contact=contact, purpose=Purpose.MARKETING)
        assert mine.filter(status=Message.Status.SENT).count() == 2
        [skipped] = mine.filter(status=Message.Status.SKIPPED)
        assert skipped.error == "frequency cap: 2 per 1 d marketing email messages already sent to this contact"
    assert Message.objects.get(pk=receipt.pk).status == Message.Status.SENT
    assert len(providers.messages()) == 21
