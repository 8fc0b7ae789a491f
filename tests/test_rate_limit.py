"""The send rate shared by all workers: measured at the provider stub, with two workers."""
from __future__ import annotations

import os
import signal

import redis
from django.conf import settings as django_settings

from drip.delivery.ratelimit import reserve_send_slot
from drip.engine.direct import send_direct
from drip.models import Channel, Message
from tests.factories import make_contact, make_event, register_quietly
from tests.helpers import flush_broker, wait_for_worker, wait_until, worker_process


def test_it_hands_out_slots_one_interval_apart_in_order(settings):
    settings.DRIP_RATE_LIMITS = {"email": 10, "sms": 0}
    settings.DRIP_RATE_LIMIT_PREFIX = "drip:ratelimit:unit"
    redis.Redis.from_url(django_settings.DRIP_RATE_LIMIT_REDIS_URL).delete("drip:ratelimit:unit:email")
    waits = [reserve_send_slot(Channel.EMAIL) for _ in range(30)]
    assert waits[0] < 0.01
    assert all(0.09 < b - a < 0.11 for a, b in zip(waits, waits[1:], strict=False))  # each caller its own slot
    assert 2.8 < waits[-1] < 3.0
    assert reserve_send_slot(Channel.SMS) == 0.0  # 0 = unlimited


def test_two_workers_together_keep_to_the_limit(transactional_db, providers, settings):
    rate = 20.0
    count = 60
    settings.DRIP_RATE_LIMIT_PREFIX = "drip:ratelimit:two-workers"
    env = {"DRIP_RATE_LIMIT_EMAIL": str(rate), "DRIP_RATE_LIMIT_PREFIX": "drip:ratelimit:two-workers"}
    flush_broker()
    workers = [worker_process(providers, env) for _ in range(2)]
    try:
        wait_for_worker()
        contact = make_contact()
        registration = register_quietly(contact, make_event())
        for i in range(count):
            send_direct(contact, Channel.EMAIL, "resources", registration, idempotency_key=f"rate-{i}")
        wait_until(lambda: Message.objects.filter(status=Message.Status.SENT).count() == count, timeout=60)
    finally:
        for proc in workers:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        flush_broker()
    times = sorted(r.at for r in providers.messages("email"))
    assert len(times) == count
    measured = (count - 1) / (times[-1] - times[0])
    assert abs(measured - rate) / rate < 0.10, f"measured {measured:.2f}/s for a limit of {rate}/s"
    # Deferrals are not attempts: every message went out on its first real try.
    assert set(Message.objects.values_list("attempts", flat=True)) == {1}
    print(f"rate limit {rate}/s, measured {measured:.2f}/s over {count} messages with two workers")
