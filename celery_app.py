"""The Celery app: configuration from Django settings (namespace CELERY), queues, routes, beat."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drip.settings")

app = Celery("drip")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["drip"])

# Two queues so a backlog of sends never delays the timer work (and the reverse); the
# worker in the Procfile consumes both.
app.conf.task_default_queue = "steps"
app.conf.task_routes = {
    "drip.tasks.send_messages": {"queue": "messages"},
    "drip.tasks.send_message": {"queue": "messages"},
    "drip.tasks.*": {"queue": "steps"},
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
    }


@app.on_after_configure.connect
def _register_beat_schedule(sender: Celery, **kwargs: object) -> None:
    # Registered in code; django-celery-beat's DatabaseScheduler copies it into its tables.
    # Deferred to here because Django's settings may still be loading when this module is.
    sender.conf.beat_schedule = _beat_schedule()
