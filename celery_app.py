"""The Celery app: configuration from Django settings (namespace CELERY), queues, routes, beat.

Web and workers both import this module, so they declare the same queues: with RabbitMQ the
publisher decides where a task goes (and, for an ETA, through which delay exchanges), so a
worker and a web process that disagreed about a queue's type or exchange would fail or lose
tasks."""
import os

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drip.settings")

app = Celery("drip")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["drip"])
# Every worker heartbeats in the database and records which steps and messages it holds, so
# the work of one that dies runs again within seconds (drip/timer/workers.py, drip/timer/failover.py).
# Named, not imported: the worker loads it once Django is set up.
app.steps["worker"].add("drip.timer.workers:WorkerPresence")

# One queue for the timer work and one per channel, so a backlog or an outage of one
# provider never delays the other channel nor the steps (drip.timer.publish picks the channel's
# queue for every send batch).
# `control` carries beat's periodic ticks (dispatch, reconcile, failover) apart from the
# work, so no backlog delays the recovery that a flushed broker or a killed worker needs.
CONTROL, STEPS, EMAIL, SMS = "control", "steps", "email", "sms"
SEND_QUEUES = {"email": EMAIL, "sms": SMS}
ALL_QUEUES = (CONTROL, STEPS, EMAIL, SMS)
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def uses_rabbitmq(url: str | None = None) -> bool:
    return str(url or app.conf.broker_url or "").startswith(AMQP_SCHEMES)


def _queues(rabbitmq: bool) -> tuple[Queue, ...]:
    if not rabbitmq:
        # Redis: the queues Celery would create by itself (a direct exchange per queue).
        return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL_QUEUES)
    # RabbitMQ: durable quorum queues (replicated, survive a restart) behind one topic
    # exchange. Quorum queues switch Celery to native delayed delivery for ETAs (the task
    # waits in RabbitMQ's delay queues, not unacknowledged in a worker's memory), which
    # needs a topic exchange: a direct one would make ETA tasks wait in the worker.
    exchange = Exchange("drip", type="topic", durable=True)
    return tuple(
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments={"x-queue-type": "quorum"})
        for name in ALL_QUEUES
    )


def _configure_queues(conf: object) -> None:
    rabbitmq = uses_rabbitmq(conf.broker_url)  # type: ignore[attr-defined]
    changes: dict[str, object] = {"task_queues": _queues(rabbitmq), "task_default_queue": STEPS}
    if rabbitmq:
        changes.update(
            task_default_exchange="drip", task_default_exchange_type="topic", task_default_routing_key=STEPS,
            # The delay queues of native delayed delivery are quorum queues too (Celery's
            # default, stated here); the worker turns off global QoS, which quorum queues refuse.
            broker_native_delayed_delivery_queue_type="quorum", worker_detect_quorum_queues=True,
        )
    conf.update(changes)  # type: ignore[attr-defined]


# Send and verify batches are published with an explicit queue= (their channel's,
# drip.timer.publish): a route cannot look at a task's arguments.
app.conf.task_routes = {
    "drip.tasks.dispatch_due_steps": {"queue": CONTROL},
    "drip.tasks.reconcile": {"queue": CONTROL},
    "drip.tasks.fail_over_dead_workers": {"queue": CONTROL},
    "drip.tasks.*": {"queue": STEPS},
}


def _beat_schedule() -> dict:
    from django.conf import settings

    return {
        "drip-dispatch-due-steps": {
            "task": "drip.tasks.dispatch_due_steps",
            "schedule": settings.DRIP_DISPATCH_INTERVAL,
            # Stale ticks are dropped, so a worker that was down does not face a pile of them.
            "options": {"expire_seconds": int(settings.DRIP_DISPATCH_INTERVAL * 2)},
        },
        "drip-reconcile": {
            "task": "drip.tasks.reconcile",
            "schedule": settings.DRIP_RECONCILE_INTERVAL,
            "options": {"expire_seconds": int(settings.DRIP_RECONCILE_INTERVAL * 2)},
        },
        # Often, and cheap when every worker is alive (one query of the worker rows).
        "drip-fail-over-dead-workers": {
            "task": "drip.tasks.fail_over_dead_workers",
            "schedule": settings.DRIP_FAILOVER_INTERVAL,
            "options": {"expire_seconds": int(settings.DRIP_FAILOVER_INTERVAL * 2)},
        },
    }


@app.on_after_configure.connect
def _register_beat_schedule(sender: Celery, **kwargs: object) -> None:
    # Registered in code; django-celery-beat's DatabaseScheduler copies it into its tables.
    # Deferred to here because Django's settings may still be loading when this module is.
    sender.conf.beat_schedule = _beat_schedule()
    # The broker is known only once the settings are: the queues are declared here too.
    _configure_queues(sender.conf)
