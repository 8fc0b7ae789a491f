"""What starts and stops the funnels: a new registration, an event moved or cancelled, a
registration cancelled. Whatever path changed the row (admin, API, shell), these run."""
from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver
from django.utils import timezone

from drip.models import Event, Message, Registration, Step

from .completion import replan_post_event
from .planning import cancel_open_steps, plan_pre_event_steps, replan_pre_event


@receiver(pre_save, sender=Event)
def remember_event_before_save(sender: type, instance: Event, **kwargs: Any) -> None:
    previous = Event.objects.filter(pk=instance.pk).values("starts_at", "status").first() if instance.pk else None
    instance._drip_previous = previous


@receiver(post_save, sender=Event)
def event_changed(sender: type, instance: Event, created: bool, **kwargs: Any) -> None:
    previous = getattr(instance, "_drip_previous", None)
    if created or previous is None:
        return
    if instance.status == Event.Status.CANCELLED and previous["status"] != Event.Status.CANCELLED:
        cancel_open_steps(Step.objects.filter(registration__event=instance), "event cancelled")
        Message.objects.filter(registration__event=instance, step__isnull=True).withdraw("event cancelled")
    elif instance.status == Event.Status.SCHEDULED and previous["starts_at"] != instance.starts_at:
        replan_pre_event(instance)


@receiver(pre_save, sender=Registration)
def remember_registration_before_save(sender: type, instance: Registration, **kwargs: Any) -> None:
    instance._drip_previous = (
        Registration.objects.filter(pk=instance.pk).values("status", "attended").first() if instance.pk else None
    )


@receiver(post_save, sender=Registration)
def registration_saved(sender: type, instance: Registration, created: bool, **kwargs: Any) -> None:
    if created:
        plan_pre_event_steps(instance)
        return
    was = getattr(instance, "_drip_previous", None) or {}
    if instance.status == Registration.Status.CANCELLED and was.get("status") != Registration.Status.CANCELLED:
        if instance.cancelled_at is None:
            Registration.objects.filter(pk=instance.pk).update(cancelled_at=timezone.now())
        cancel_open_steps(instance.steps.all(), "registration cancelled")
        Message.objects.filter(registration=instance, step__isnull=True).withdraw("registration cancelled")
    elif bool(instance.attended) != bool(was.get("attended")):
        replan_post_event(instance)  # only acts once the event is completed
