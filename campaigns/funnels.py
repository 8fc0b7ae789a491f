"""The funnels as data. Adding a step is one line in a table below; adding a funnel is one
more table, registered in apps.py.

A step's due time is its anchor (the event start, or the event's completion) plus its offset
divided by DRIP_TIME_SCALE. The first step of a funnel is sent at once even when planned late;
any other step already past due when planned is skipped with the reason.
"""
from __future__ import annotations

from datetime import timedelta

from drip.domain.funnels import ATTENDED, NO_SHOW, Anchor, Funnel, FunnelStep, Purpose, Trigger
from drip.models import Channel, Event

EMAIL = Channel.EMAIL
SMS = Channel.SMS
MARKETING = Purpose.MARKETING
H = timedelta(hours=1)
D = timedelta(days=1)

PRE_EVENT = Funnel(
    name="pre_event",
    trigger=Trigger.ENROLLED,
    anchor=Anchor.START,
    requires=Event.Status.SCHEDULED,
    expires_at_anchor=True,
    steps=(
        FunnelStep("welcome", None, (EMAIL,), "welcome"),
        FunnelStep("reminder_24h", -24 * H, (EMAIL, SMS), "reminder_24h"),
        FunnelStep("reminder_1h", -1 * H, (EMAIL, SMS), "reminder_1h"),
    ),
)

POST_EVENT = Funnel(
    name="post_event",
    trigger=Trigger.COMPLETED,
    anchor=Anchor.COMPLETION,
    requires=Event.Status.COMPLETED,
    by_attendance=True,
    steps=(
        FunnelStep("thank_you", 1 * H, (EMAIL,), "thank_you", ATTENDED),
        FunnelStep("resources", 24 * H, (EMAIL,), "resources", ATTENDED),
        FunnelStep("nurture", 3 * D, (EMAIL,), "nurture", ATTENDED, MARKETING),
        FunnelStep("sorry_missed", 1 * H, (EMAIL,), "sorry_missed", NO_SHOW),
        FunnelStep("reengagement", 24 * H, (EMAIL, SMS), "reengagement", NO_SHOW, MARKETING),
        FunnelStep("final_followup", 7 * D, (EMAIL,), "final_followup", NO_SHOW, MARKETING),
    ),
)

FUNNELS = (PRE_EVENT, POST_EVENT)
