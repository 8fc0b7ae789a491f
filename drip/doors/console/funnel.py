"""An event's funnel: per step and channel, how many were planned, sent, delivered, skipped
(by reason), failed, and are still pending; a small server-rendered SVG bar chart."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Min
from django.template.loader import render_to_string
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from drip.domain.funnels import registered
from drip.doors.console.display import when
from drip.models import Event, Message, Step

# Bar segments, in the order drawn, and their colours.
SEGMENTS = (("delivered", "#2e7d32"), ("sent", "#66bb6a"), ("pending", "#90a4ae"),
            ("skipped", "#ffb300"), ("failed", "#d32f2f"))
SENT_LIKE: dict[str, str] = {Message.Status.SENT: "sent", Message.Status.DELIVERED: "delivered",
             Message.Status.SKIPPED: "skipped", Message.Status.FAILED: "failed", Message.Status.BOUNCED: "failed",
             Message.Status.QUEUED: "pending", Message.Status.SENDING: "pending"}


@dataclass
class Row:
    key: str
    channel: str
    planned: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    skipped_by_reason: Counter[str] = field(default_factory=Counter)

    def count(self, name: str) -> int:
        return self.counts[name]

    @property
    def reasons(self) -> list[tuple[str, int]]:
        return self.skipped_by_reason.most_common()


def step_channels() -> dict[str, tuple[str, ...]]:
    """Each funnel step's channels, in the funnels' own order."""
    return {s.key: s.channels for f in registered() for s in f.steps}


def funnel_rows(event: Event) -> list[Row]:
    """Two aggregate queries: steps by (key, status, reason), messages by (key, channel,
    status, error). A cancelled step (superseded by a new plan, or its registration
    cancelled) is not counted as planned."""
    channels = step_channels()
    rows: dict[tuple[str, str], Row] = {}

    def row(key: str, channel: str) -> Row:
        return rows.setdefault((key, channel), Row(key, channel))

    for key in channels:
        for channel in channels[key]:
            row(key, channel)
    steps = (Step.objects.filter(registration__event=event).exclude(status=Step.Status.CANCELLED)
             .values("key", "status", "reason").annotate(n=Count("id")))
    for s in steps:
        for channel in channels.get(s["key"], ("email",)):
            r = row(s["key"], channel)
            r.planned += s["n"]
            if s["status"] in (*Step.OPEN, Step.Status.RUNNING):
                r.counts["pending"] += s["n"]
            elif s["status"] == Step.Status.SKIPPED:
                r.counts["skipped"] += s["n"]
                r.skipped_by_reason[s["reason"] or "-"] += s["n"]
            elif s["status"] == Step.Status.FAILED:
                r.counts["failed"] += s["n"]
    messages = (Message.objects.filter(registration__event=event, step__isnull=False)
                .exclude(step__status=Step.Status.CANCELLED)
                .values("step__key", "channel", "status", "error").annotate(n=Count("id")))
    for m in messages:
        r = row(m["step__key"], m["channel"])
        outcome = SENT_LIKE.get(m["status"], "pending")
        r.counts[outcome] += m["n"]
        if outcome == "skipped":
            r.skipped_by_reason[m["error"] or "-"] += m["n"]
    # A done step whose message for a channel is missing (a funnel changed since) stays pending.
    return [r for r in rows.values() if r.planned or r.counts]


def next_due(event: Event) -> dict[str, Any] | None:
    found = (Step.objects.filter(registration__event=event, status__in=Step.OPEN)
             .values("key").annotate(due=Min("due_at"), n=Count("id")).order_by("due").first())
    return dict(found) if found else None


def waiting_messages(event: Event) -> dict[str, Any] | None:
    """Messages not yet sent whose steps are done (a retry's backoff, an SMS held for quiet
    hours): still pending, so "nothing pending" would be wrong."""
    found = Message.objects.filter(registration__event=event).unsent().aggregate(due=Min("next_attempt_at"), n=Count("id"))
    return found if found["n"] else None


def svg_chart(rows: list[Row]) -> SafeString:
    """Horizontal stacked bars, one per step and channel, scaled to the largest plan."""
    width, label_w, bar_h, gap = 640, 170, 18, 8
    scale = max([r.planned for r in rows] + [1])
    height = len(rows) * (bar_h + gap) + 30
    parts: list[SafeString] = []
    for i, r in enumerate(rows):
        y = i * (bar_h + gap)
        parts.append(format_html('<text x="0" y="{}" font-size="12">{} · {}</text>', y + 13, r.key, r.channel))
        x = float(label_w)
        for name, colour in SEGMENTS:
            n = r.count(name)
            if not n:
                continue
            w = (width - label_w - 40) * n / scale
            parts.append(format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}: {}</title></rect>',
                f"{x:.1f}", y, f"{w:.1f}", bar_h, colour, r.key, name, n,
            ))
            x += w
        parts.append(format_html('<text x="{}" y="{}" font-size="11">{}</text>', f"{x + 4:.1f}", y + 13, r.planned))
    legend_y = len(rows) * (bar_h + gap) + 12
    legend = format_html_join("", '<rect x="{}" y="{}" width="10" height="10" fill="{}"></rect>'
                              '<text x="{}" y="{}" font-size="11">{}</text>',
                              ((label_w + i * 90, legend_y, colour, label_w + i * 90 + 14, legend_y + 9, name)
                               for i, (name, colour) in enumerate(SEGMENTS)))
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="drip-funnel-chart" width="{}" height="{}" '
        'viewBox="0 0 {} {}" role="img" aria-label="funnel chart">{}{}</svg>',
        width, height, width, height, mark_safe("".join(parts)), legend,
    )


def render(event: Event) -> SafeString:
    rows = funnel_rows(event)
    upcoming = next_due(event)
    context = {
        "rows": rows, "chart": svg_chart(rows), "segments": [name for name, _ in SEGMENTS],
        "next": upcoming and {**upcoming, "due_shown": when(upcoming["due"], event.timezone)},
        "waiting": (waiting := waiting_messages(event)) and {**waiting, "due_shown": when(waiting["due"], event.timezone)},
    }
    return render_to_string("admin/drip/funnel.html", context)


def totals(rows: list[Row]) -> dict[str, int]:
    summed: dict[str, int] = defaultdict(int)
    for r in rows:
        summed["planned"] += r.planned
        for name, _ in SEGMENTS:
            summed[name] += r.count(name)
    return dict(summed)
