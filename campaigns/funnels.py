"""The funnels as data. Adding a step is one line in a table below.

A step's due time is its anchor (the event start, or the event's completion) plus its offset
divided by DRIP_TIME_SCALE. The first step of a funnel is sent at once even when planned late;
any other step already past due when planned is skipped with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

from drip.models import Channel, Event, Registration, Step

EMAIL = Channel.EMAIL
SMS = Channel.SMS


@dataclass(frozen=True)
class FunnelStep:
    key: str
    # From the anchor; None means "as soon as planned" (the welcome).
    offset: timedelta | None
    channels: tuple[str, ...]
    template_type: str
    branch: str = ""


@dataclass(frozen=True)
class Funnel:
    name: str
    steps: tuple[FunnelStep, ...]
    # Pre-event steps expire at the event start: nothing of theirs goes out after it.
    expires_at_anchor: bool

    def anchor(self, event: Event) -> datetime | None:
        return event.starts_at if self.name == PRE_EVENT_NAME else event.completed_at

    def steps_for(self, branch: str) -> tuple[FunnelStep, ...]:
        return tuple(s for s in self.steps if s.branch == branch)

    def step(self, key: str) -> FunnelStep:
        for step in self.steps:
            if step.key == key:
                return step
        raise KeyError(f"funnel {self.name} has no step {key!r}")

    def is_first(self, step: FunnelStep) -> bool:
        return self.steps_for(step.branch)[0] == step

    def branch_for(self, registration: Registration) -> str:
        if self.name == PRE_EVENT_NAME:
            return ""
        # Unknown attendance counts as a no-show.
        return ATTENDED if registration.attended else NO_SHOW

    def blocking_reason(self, step: Step, registration: Registration, event: Event) -> str:
        """Why this step may no longer run for this registration, or "" if it may."""
        if registration.status != Registration.Status.ACTIVE:
            return "registration cancelled"
        if event.status == Event.Status.CANCELLED:
            return "event cancelled"
        if self.name == PRE_EVENT_NAME:
            if event.status != Event.Status.SCHEDULED:
                return f"event is {event.status}"
            # A step sent "at once" (the welcome) is not tied to the start time: it renders
            # the current start, so a reschedule after it ran must not drop it.
            if self.step(step.key).offset is not None and event.starts_at != step.anchor_at:
                return f"planned for an old event start ({step.anchor_at.isoformat()}); the event now starts {event.starts_at.isoformat()}"
        else:
            if event.status != Event.Status.COMPLETED:
                return f"event is {event.status}, not completed"
            if event.completed_at != step.anchor_at:
                return "planned for an old completion time"
            if self.step(step.key).branch != self.branch_for(registration):
                return f"attendance changed: registration is now on the {self.branch_for(registration)} branch"
        return ""


def scaled(offset: timedelta) -> timedelta:
    return offset / float(settings.DRIP_TIME_SCALE)


PRE_EVENT_NAME = "pre_event"
POST_EVENT_NAME = "post_event"
ATTENDED = "attended"
NO_SHOW = "no_show"
H = timedelta(hours=1)
D = timedelta(days=1)

PRE_EVENT = Funnel(
    name=PRE_EVENT_NAME,
    expires_at_anchor=True,
    steps=(
        FunnelStep("welcome", None, (EMAIL,), "welcome"),
        FunnelStep("reminder_24h", -24 * H, (EMAIL, SMS), "reminder_24h"),
        FunnelStep("reminder_1h", -1 * H, (EMAIL, SMS), "reminder_1h"),
    ),
)

POST_EVENT = Funnel(
    name=POST_EVENT_NAME,
    expires_at_anchor=False,
    steps=(
        FunnelStep("thank_you", 1 * H, (EMAIL,), "thank_you", ATTENDED),
        FunnelStep("resources", 24 * H, (EMAIL,), "resources", ATTENDED),
        FunnelStep("nurture", 3 * D, (EMAIL,), "nurture", ATTENDED),
        FunnelStep("sorry_missed", 1 * H, (EMAIL,), "sorry_missed", NO_SHOW),
        FunnelStep("reengagement", 24 * H, (EMAIL, SMS), "reengagement", NO_SHOW),
        FunnelStep("final_followup", 7 * D, (EMAIL,), "final_followup", NO_SHOW),
    ),
)

FUNNELS = {f.name: f for f in (PRE_EVENT, POST_EVENT)}
TEMPLATE_TYPES = frozenset(s.template_type for f in FUNNELS.values() for s in f.steps)


def funnel_step(step: Step) -> tuple[Funnel, FunnelStep]:
    funnel = FUNNELS[step.funnel]
    return funnel, funnel.step(step.key)
