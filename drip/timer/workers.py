"""A worker's presence and what it holds: the worker side of fast failover (drip/timer/failover.py
is the other side).

A worker killed with SIGKILL takes with it the ETA tasks it reserved (up to
DRIP_ENQUEUE_HORIZON ahead): Redis hands them back only after the visibility timeout (1 h),
the reconciler after DRIP_RECONCILE_GRACE. So each worker process says who it is and what it
holds, in the database (the source of truth for work, whatever the broker):

- a Worker row per run of the process (Celery's node name, pid), whose `seen_at` a thread
  refreshes every DRIP_WORKER_HEARTBEAT seconds with the database's clock;
- when its consumer receives a step or send task (Celery's `task_received`, sent in the
  process that talks to the broker, for an ETA task as soon as it is reserved, long before it
  runs), the same thread writes the worker on those rows (`held_by`) a moment later.

Both writes run in the thread, never in the consumer's event loop, so a slow database delays
no task. The thread is a worker bootstep (celery_app.py adds it), so it runs in every worker,
the tests' embedded ones included, starts before the consumer and stops after it.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import bootsteps
from celery.signals import task_received
from django.conf import settings
from django.db import connection
from django.db.models.functions import Now

from drip.models import Message, Step, Worker
from drip.timer.publish import RUN_STEPS, SEND_MESSAGES

log = logging.getLogger("drip.workers")

# The tasks whose arguments are step or message ids.
STEP_TASKS = frozenset({RUN_STEPS})
SEND_TASKS = frozenset({SEND_MESSAGES})


class Presence:
    """The heartbeat and the holds of one worker process, written by one thread."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.worker_id: int | None = None
        self._lock = threading.Lock()
        self._steps: set[int] = set()
        self._messages: set[int] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drip-presence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def received(self, task_name: str, ids: list[int]) -> None:
        """Called from the consumer: remember, and let the thread write it at once."""
        if task_name in STEP_TASKS:
            pending = self._steps
        elif task_name in SEND_TASKS:
            pending = self._messages
        else:
            return
        with self._lock:
            pending.update(ids)
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                self._tick()
                self._wake.wait(settings.DRIP_WORKER_HEARTBEAT)
            self._goodbye()
        finally:
            connection.close()  # this thread's own connection

    def _tick(self) -> None:
        try:
            if self.worker_id is None:
                self.worker_id = Worker.objects.create(
                    name=self.hostname, pid=os.getpid(), started_at=Now(), seen_at=Now()
                ).pk
                log.info("worker %s registered as %s", self.hostname, self.worker_id)
            # Written at every wake, not only every interval: cheap (one row), and a burst of
            # received tasks cannot starve the heartbeat.
            if Worker.objects.filter(pk=self.worker_id, failed_over_at__isnull=False).exists():
                log.warning("worker %s was taken for dead and its work handed over; it is back", self.hostname)
            Worker.objects.filter(pk=self.worker_id).beat()
            self._write_holds(self.worker_id)
        except Exception as exc:  # noqa: BLE001 - the database may be away; try again next tick
            log.warning("worker %s: could not write its heartbeat or holds: %s", self.hostname, exc)
            connection.close()

    def _write_holds(self, worker_id: int) -> None:
        with self._lock:
            steps, self._steps = self._steps, set()
            messages, self._messages = self._messages, set()
        try:
            if steps:
                Step.objects.filter(id__in=steps).hold(worker_id)
            if messages:
                Message.objects.filter(id__in=messages).hold(worker_id)
        except Exception:
            with self._lock:  # written on the next tick instead
                self._steps |= steps
                self._messages |= messages
            raise

    def _goodbye(self) -> None:
        """A clean stop (after the consumer closed): nothing of ours needs taking over."""
        if self.worker_id is None:
            return
        try:
            Worker.objects.filter(pk=self.worker_id).stop()
        except Exception as exc:  # noqa: BLE001 - then failover re-arms ours: harmless duplicates
            log.warning("worker %s: could not record its stop: %s", self.hostname, exc)


class WorkerPresence(bootsteps.StartStopStep):
    """The worker bootstep (celery_app.py). Not `last`, so it starts before the consumer
    (the last step) and stops after it, when the broker already has its tasks back."""

    label = "drip presence"
    # After the pool: prefork forks its children before this thread exists, so none of
    # them inherits a lock the thread held at that instant (logging's, the database's).
    requires = ("celery.worker.components:Pool",)

    # Celery's stubs type create() as returning None; StartStopStep keeps what it returns as
    # the object it starts and stops.
    def create(self, parent: Any) -> Presence:  # type: ignore[override]
        presence = Presence(str(parent.hostname))
        parent.drip_presence = presence  # found by the task_received receiver below
        return presence


def _ids(args: Any) -> list[int]:
    first = args[0] if args else []
    return [first] if isinstance(first, int) else [int(i) for i in first]


@task_received.connect(dispatch_uid="drip.workers.task_received", weak=False)
def on_task_received(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    # sender: the worker's Consumer; its controller is the WorkController the step created
    # the presence for (several embedded workers may share a test process).
    presence = getattr(getattr(sender, "controller", None), "drip_presence", None)
    if presence is None or request is None:
        return
    try:
        presence.received(request.task_name, _ids(request.args))
    except Exception:  # a hold is an optimisation: never let it break the consumer
        log.exception("could not note the ids of task %s", getattr(request, "id", "?"))
