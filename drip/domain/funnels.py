"""What the engine knows of a funnel: its shape, never a particular one.

A funnel is a table of steps plus the few facts in which funnels differ: the event time its
steps count from (the start, or the completion), the event status they need, whether
registrations take one branch by attendance, whether steps expire at the anchor. The
funnels themselves live in `campaigns/` and register here when Django starts, so a third
funnel is a table entry there and no code here.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings

from drip.models import Event, Purpose, Registration, Step

ATTENDED = "attended"
NO_SHOW = "no_show"


class Block(NamedTuple):
    """Why a row may not go on: the status it ends in, and the reason recorded on it."""

    status: str
    reason: str


class Anchor(enum.Enum):
    START = "start"  # the event's scheduled start
    COMPLETION = "completion"  # when the event was completed


class Trigger(enum.Enum):
    ENROLLED = "enrolled"  # planned when a registration is created or reactivated
    COMPLETED = "completed"  # planned for every registration when the event is completed


@dataclass(frozen=True)
class FunnelStep:
    key: str
    # From the anchor; None means "as soon as planned" (the welcome).
    offset: timedelta | None
    channels: tuple[str, ...]
    template_type: str
    branch: str = ""
    purpose: Purpose = Purpose.TRANSACTIONAL


@dataclass(frozen=True)
class Funnel:
    name: str
    steps: tuple[FunnelStep, ...]
    trigger: Trigger
    anchor: Anchor
    # The event status its steps need to run (scheduled before the event, completed after).
    requires: str
    # One branch per registration by attendance (unknown attendance counts as a no-show).
    by_attendance: bool = False
    # Steps expire at the anchor: nothing of theirs goes out after it.
    expires_at_anchor: bool = False

    def anchor_of(self, event: Event) -> datetime | None:
        return event.starts_at if self.anchor is Anchor.START else event.completed_at

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
        if not self.by_attendance:
            return ""
        return ATTENDED if registration.attended else NO_SHOW

    @property
    def timed_keys(self) -> tuple[str, ...]:
        """The steps tied to the anchor's time (a step sent "at once" renders the current
        time instead, so moving the anchor does not touch it)."""
        return tuple(s.key for s in self.steps if s.offset is not None)

    def block(self, step: Step, registration: Registration, event: Event) -> Block | None:
        """Why this step may no longer run for this registration, or None if it may."""
        if registration.status != Registration.Status.ACTIVE:
            return Block(Step.Status.CANCELLED, "registration cancelled")
        if event.status == Event.Status.CANCELLED:
            return Block(Step.Status.CANCELLED, "event cancelled")
        reason = self._stale_reason(step, registration, event)
        return Block(Step.Status.SKIPPED, reason) if reason else None

    def _stale_reason(self, step: Step, registration: Registration, event: Event) -> str:
        if event.status != self.requires:
            return f"event is {event.status}, not {self.requires}"
        anchor = self.anchor_of(event)
        if self.step(step.key).offset is not None and anchor != step.anchor_at:
            if self.anchor is Anchor.START:
                return f"planned for an old event start ({step.anchor_at.isoformat()}); the event now starts {event.starts_at.isoformat()}"
            return "planned for an old completion time"
        if self.by_attendance and self.step(step.key).branch != self.branch_for(registration):
            return f"attendance changed: registration is now on the {self.branch_for(registration)} branch"
        return ""


def scaled(offset: timedelta) -> timedelta:
    return offset / float(settings.DRIP_TIME_SCALE)


_FUNNELS: dict[str, Funnel] = {}


def register(*funnels: Funnel) -> None:
    """Called by the app that defines funnels (campaigns) when Django starts."""
    for funnel in funnels:
        _FUNNELS[funnel.name] = funnel


def funnel(name: str) -> Funnel:
    return _FUNNELS[name]


def registered() -> tuple[Funnel, ...]:
    return tuple(_FUNNELS.values())


def started_by(trigger: Trigger) -> tuple[Funnel, ...]:
    return tuple(f for f in _FUNNELS.values() if f.trigger is trigger)


def funnel_step(step: Step) -> tuple[Funnel, FunnelStep]:
    """The definition of a planned step; KeyError when its funnel or key is gone."""
    found = _FUNNELS[step.funnel]
    return found, found.step(step.key)


def purpose_of(template_type: str) -> str:
    """The purpose of the funnel step that defines this template (marketing if any step
    sending it is): a direct send of a marketing template is paced as the funnel's is."""
    purposes = {s.purpose for f in _FUNNELS.values() for s in f.steps if s.template_type == template_type}
    return Purpose.MARKETING if Purpose.MARKETING in purposes else Purpose.TRANSACTIONAL


def template_types() -> frozenset[str]:
    return frozenset(s.template_type for f in _FUNNELS.values() for s in f.steps)
