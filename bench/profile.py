"""Where a message's CPU goes: `make bench-profile` (scripts/bench.sh --profile).

The step task and the send task run in this process, in the batches a worker gets, against
the bench's loopback stub (its own threads), under cProfile. n registrations on a completed
event's no-show branch: the `reengagement` step, an email and an SMS each (the shape of a
reminder). Prints wall and CPU milliseconds per message, split by stage of the send path,
and the functions that cost the most; writes bench/profile.json. No broker, no worker
process: it measures the code, not the queue (the end-to-end figures are `make bench`'s).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.run import configure_environment, reset_broker
from bench.stub import BenchStub

HERE = Path(__file__).resolve().parent
# Stages of the path, each the cumulative time of the function that does it. A function's
# time includes what it calls, so nested stages (the provider call inside _deliver) are
# listed apart and subtracted where said.
STAGES = {
    "step task: claim, load, checks, insert messages": ("drip/engine/steps.py", "run_step_batch"),
    "send: claim the batch": ("drip/models.py", "claim"),
    "send: load the batch (one query, five tables)": ("drip/delivery/sender.py", "_load_batch"),
    "send: checks (consent, expiry, event)": ("drip/domain/policy.py", "message_block"),
    "send: render": ("drip/delivery/sender.py", "_render"),
    "send: the guarded write before the call": ("drip/delivery/sender.py", "_record_calls"),
    "send: the provider call (client + HTTP + stub answer)": ("drip/delivery/channels/", "send_many"),
    "send: the outcome write": ("drip/delivery/sender.py", "_record_sent"),
    "send: logging": ("logging/__init__.py", "_log"),
}


def _cumulative(stats: pstats.Stats, where: tuple[str, str]) -> float:
    path, name = where
    total = 0.0
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if function == name and path in filename:  # a file, or a package by its folder
            total += cumulative
    return total


def _timed(profile: cProfile.Profile, work: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    profile.runcall(work)
    return time.perf_counter() - wall, time.thread_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registrations", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--dump", help="also write the raw cProfile stats here (for pstats or snakeviz)")
    args = parser.parse_args()
    stub = BenchStub()
    configure_environment(stub)
    import django

    django.setup()
    from celery.utils.functional import chunks
    from django.conf import settings
    from django.core.management import call_command
    from django.utils import timezone

    from bench import world
    from drip.delivery.sender import send_batch
    from drip.engine.steps import run_step_batch
    from drip.models import Message, Step

    call_command("migrate", verbosity=0)
    world.wipe()
    reset_broker()
    n = args.registrations
    event = world.make_event("profile", completed_at=timezone.now() - timedelta(hours=2))
    registrations = world.make_registrations("profile", event, world.make_contacts("profile", n), attended=False)
    steps = world.insert_steps(event, registrations, "reengagement", timezone.now() - timedelta(seconds=1), Step.Status.ENQUEUED)
    world.analyze()

    profile = cProfile.Profile()
    step_ids = [s.pk for s in steps]
    def run_steps() -> None:
        for ids in chunks(iter(step_ids), settings.DRIP_STEP_BATCH):
            run_step_batch(ids)

    step_wall, step_cpu = _timed(profile, run_steps)
    queued = Message.objects.filter(step__in=step_ids, status=Message.Status.QUEUED).order_by("channel", "id")
    batches = [list(ids) for channel in ("email", "sms")
               for ids in chunks(iter(queued.filter(channel=channel).values_list("id", flat=True)), settings.DRIP_SEND_BATCH)]
    def send() -> None:
        for ids in batches:
            send_batch(ids)

    send_wall, send_cpu = _timed(profile, send)
    sent = Message.objects.filter(step__in=step_ids, status=Message.Status.SENT).count()
    reset_broker()  # the step task published send tasks that no worker takes here
    world.wipe()
    stub.close()

    stats = pstats.Stats(profile)
    if args.dump:
        stats.dump_stats(args.dump)
    per = 1000 / max(1, sent)
    result: dict[str, Any] = {
        "registrations": n, "messages_sent": sent, "stub_received": stub.count(),
        "ms_per_message": {"step_task_wall": round(step_wall * per, 3), "step_task_cpu": round(step_cpu * per, 3),
                           "send_task_wall": round(send_wall * per, 3), "send_task_cpu": round(send_cpu * per, 3)},
        "stages_ms_per_message": {label: round(_cumulative(stats, where) * per, 3) for label, where in STAGES.items()},
    }
    print(json.dumps(result, indent=2))
    stats.sort_stats("tottime").print_stats(args.top)
    (HERE / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
