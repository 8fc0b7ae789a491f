"""The soak's verdict: what should have been sent (from the plan, independently of the
database) against what the stub received and what the Message and Step rows say.

A message is the triple registration x step x channel. Expected: every step of the funnel
the registration's branch has, on every channel its contact consented to. Each expected
triple ends as exactly one of:
  delivered   the stub accepted it (or accepted it and dropped the connection: the provider
              has it) at least once;
  failed      not delivered, and its Message row says failed, with the reason;
  skipped     not delivered, and its Message or Step row says skipped/cancelled, with the reason
              (a reminder still unsent at the event's start expires: nothing arrives after it);
  unfinished  not delivered yet, and its row is still on its way (a step or message open,
              queued or sending) when the soak stopped: a backlog, not a loss (the run did
              not settle in time);
  lost        none of these: no row at all where its step is done, or a row that says sent
              although the stub never had it.
Duplicated: a triple the stub accepted more than once (one Message id twice, or two ids).
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

H, D = timedelta(hours=1), timedelta(days=1)
LATE_SECONDS = 10.0
EXAMPLES = 5
DELIVERED_OUTCOMES = ("accepted", "dropped")
OPEN_MESSAGE = ("queued", "sending")  # still on its way when the soak stopped
OPEN_STEP = ("pending", "enqueued", "running")
PRE = (("welcome", None, ("email",)), ("reminder_24h", -24 * H, ("email", "sms")), ("reminder_1h", -1 * H, ("email", "sms")))
ATTENDED = (("thank_you", H, ("email",)), ("resources", 24 * H, ("email",)), ("nurture", 3 * D, ("email",)))
NO_SHOW = (("sorry_missed", H, ("email",)), ("reengagement", 24 * H, ("email", "sms")), ("final_followup", 7 * D, ("email",)))


@dataclass
class Registration:
    external_id: str
    contact_id: str
    event: int
    email: str
    phone: str
    email_consent: bool
    sms_consent: bool
    attended: bool
    enrolled_at: float = 0.0  # epoch of the API's 202 for its list


Triple = tuple[str, str, str]  # registration external id, step key, channel


def expected_plan(scale: float, regs: list[Registration], starts: dict[int, float],
                  completions: dict[int, float]) -> tuple[dict[Triple, float], list[Triple]]:
    """Every triple the funnels call for, with its due time (epoch); and the triples the
    rules legitimately leave out (a reminder already past due when its registration came in)."""
    expected: dict[Triple, float] = {}
    too_late: list[Triple] = []
    for reg in regs:
        channels = {"email"} if reg.email_consent else set()
        if reg.sms_consent and reg.phone:
            channels.add("sms")
        steps = [(key, reg.enrolled_at if off is None else starts[reg.event] + off.total_seconds() / scale, ch)
                 for key, off, ch in PRE]
        steps += [(key, completions[reg.event] + off.total_seconds() / scale, ch)
                  for key, off, ch in (ATTENDED if reg.attended else NO_SHOW)]
        for key, due, wanted in steps:
            for channel in wanted:
                if channel not in channels:
                    continue
                if key != "welcome" and due < reg.enrolled_at:
                    too_late.append((reg.external_id, key, channel))
                else:
                    expected[(reg.external_id, key, channel)] = due
    return expected, too_late


def load_receipts(path: Path) -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.strip():
            receipt = json.loads(line)
            by_id[receipt["message_id"]].append(receipt)
    return by_id


def load_rows() -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """Message rows by id, and the latest plan of each registration x step."""
    from django.db import connections

    from drip.models import Message, Step

    connections.close_all()
    messages: dict[str, dict[str, Any]] = {
        str(m["id"]): dict(m) for m in Message.objects.values(
            "id", "status", "error", "channel", "template_type", "attempts", "registration__external_id", "step__key",
            "step__due_at", "step__status", "sent_at")
    }
    steps: dict[tuple[str, str], dict[str, Any]] = {}
    for s in Step.objects.order_by("plan_version").values("registration__external_id", "key", "status", "reason", "due_at", "attempts"):
        steps[(s["registration__external_id"], s["key"])] = dict(s)
    return messages, steps


def reason_group(text: str) -> str:
    """The reason without its particulars (times, numbers, ports), to group alike ones."""
    text = re.sub(r"\d{4}-\d\d-\d\d[T ][\d:.]+(\+00:00|Z)?", "<time>", text or "(no reason recorded)")
    text = re.sub(r"0x[0-9a-f]+", "<addr>", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:160]


def clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:-4]


def story(mid: str, row: dict[str, Any] | None, receipts: list[dict[str, Any]]) -> str:
    """One line an engineer can start from: the row's state and what the stub saw of it."""
    seen = ", ".join(f"{r['outcome']}@{clock(r['at'])}" for r in receipts) or "never reached the stub"
    if row is None:
        return f"message {mid}: no Message row; stub: {seen}"
    return (f"message {mid} ({row['registration__external_id']} {row['step__key']} {row['channel']}): row {row['status']}, "
            f"attempts {row['attempts']}, error {row['error']!r}; stub: {seen}")


class Verdict:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.reasons: dict[str, Counter[str]] = {"failed": Counter(), "skipped": Counter(), "unfinished": Counter(), "lost": Counter()}
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.lateness: list[float] = []
        self.lateness_by_step: dict[str, list[float]] = defaultdict(list)

    def example(self, kind: str, text: str) -> None:
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(text)

    def outcome(self, kind: str, reason: str, text: str) -> None:
        self.counts[kind] += 1
        self.reasons[kind][reason_group(reason)] += 1
        self.example(f"{kind}: {reason_group(reason)}", text)


def judge(triple: Triple, due: float, ids: list[str], messages: dict[str, dict[str, Any]],
          steps: dict[tuple[str, str], dict[str, Any]], receipts: dict[str, list[dict[str, Any]]], verdict: Verdict) -> None:
    delivered = {mid: [r for r in receipts.get(mid, []) if r["outcome"] in DELIVERED_OUTCOMES] for mid in ids}
    delivered = {mid: got for mid, got in delivered.items() if got}
    if delivered:
        _judge_delivered(triple, due, delivered, messages, receipts, verdict)
        return
    rows = [messages[mid] for mid in ids]
    for status, kind in (("failed", "failed"), ("bounced", "failed"), ("skipped", "skipped")):
        hit = [(mid, r) for mid, r in zip(ids, rows, strict=True) if r["status"] == status]
        if hit:
            verdict.outcome(kind, hit[0][1]["error"], story(hit[0][0], hit[0][1], receipts.get(hit[0][0], [])))
            return
    step = steps.get((triple[0], triple[1]))
    if not rows and step is not None and step["status"] in ("skipped", "cancelled", "failed"):
        kind = "failed" if step["status"] == "failed" else "skipped"
        verdict.outcome(kind, f"step {step['status']}: {step['reason']}", f"{triple}: step {step['status']} {step['reason']!r}")
        return
    if rows:
        mid = ids[0]
        kind = "unfinished" if rows[0]["status"] in OPEN_MESSAGE else "lost"
        verdict.outcome(kind, f"row {rows[0]['status']} but the stub never accepted it", story(mid, rows[0], receipts.get(mid, [])))
    else:
        state = f"step {step['status']} (attempts {step['attempts']}, reason {step['reason']!r})" if step else "no Step row"
        kind = "unfinished" if step is not None and step["status"] in OPEN_STEP else "lost"
        verdict.outcome(kind, f"no Message row; {state.split(' (')[0]}", f"{triple}: no Message row; {state}")


def _judge_delivered(triple: Triple, due: float, delivered: dict[str, list[dict[str, Any]]],
                     messages: dict[str, dict[str, Any]], receipts: dict[str, list[dict[str, Any]]], verdict: Verdict) -> None:
    verdict.counts["delivered"] += 1
    total = sum(len(got) for got in delivered.values())
    if total > 1:
        verdict.counts["duplicated"] += 1
        kind = "two ids" if len(delivered) > 1 else "same id twice"
        verdict.counts[f"duplicated ({kind})"] += 1
        verdict.example(f"duplicated ({kind})", " | ".join(story(mid, messages.get(mid), receipts[mid]) for mid in delivered))
    first = min(r["at"] for got in delivered.values() for r in got)
    late = first - due
    verdict.lateness.append(late)
    verdict.lateness_by_step[f"{triple[1]}/{triple[2]}"].append(late)
    if late > LATE_SECONDS:
        verdict.counts["late"] += 1
        mid = next(iter(delivered))
        verdict.example("late", f"{late:.1f} s late: " + story(mid, messages.get(mid), receipts[mid]))
    for mid in delivered:
        row = messages.get(mid)
        if row is not None and row["status"] not in ("sent", "delivered"):
            verdict.counts[f"delivered, yet row {row['status']}"] += 1
            verdict.example(f"delivered, yet row {row['status']}", story(mid, row, receipts[mid]))


def analyse(scale: float, regs: list[Registration], starts: dict[int, float], completions: dict[int, float],
            receipts_path: Path) -> dict[str, Any]:
    expected, too_late = expected_plan(scale, regs, starts, completions)
    messages, steps = load_rows()
    receipts = load_receipts(receipts_path)
    ids_by_triple: dict[Triple, list[str]] = defaultdict(list)
    for mid, row in messages.items():
        ids_by_triple[(row["registration__external_id"], row["step__key"], row["channel"])].append(mid)
    verdict = Verdict()
    for triple, due in expected.items():
        step = steps.get((triple[0], triple[1]))
        step_due = step["due_at"].timestamp() if step else due  # the row's own due time, when it exists
        judge(triple, step_due, sorted(ids_by_triple.get(triple, []), key=int), messages, steps, receipts, verdict)
    unexpected = [mid for t, mids in ids_by_triple.items() if t not in expected for mid in mids]
    stray = [mid for mid in receipts if mid not in messages]
    for mid in unexpected:
        if messages[mid]["status"] != "skipped":  # a row for a channel without consent must stop at its check
            verdict.example("unexpected Message rows, not skipped", story(mid, messages[mid], receipts.get(mid, [])))
    return {"figures": _figures(expected, too_late, messages, receipts, unexpected, stray, verdict),
            "reasons": {k: dict(v.most_common()) for k, v in verdict.reasons.items()},
            "examples": dict(verdict.examples)}


def _figures(expected: dict[Triple, float], too_late: list[Triple], messages: dict[str, dict[str, Any]],
             receipts: dict[str, list[dict[str, Any]]], unexpected: list[str], stray: list[str], verdict: Verdict) -> dict[str, Any]:
    lateness = sorted(verdict.lateness)
    outcomes = Counter(r["outcome"] for got in receipts.values() for r in got)
    by_key = Counter(t[1] + "/" + t[2] for t in expected)
    return {
        "expected": len(expected), "expected_by_step": dict(sorted(by_key.items())),
        "not_planned_enrolled_after_due": len(too_late),
        "message_rows": len(messages), "message_rows_by_status": dict(Counter(m["status"] for m in messages.values())),
        "stub_requests": dict(outcomes),
        "delivered": verdict.counts["delivered"], "unfinished": verdict.counts["unfinished"], "lost": verdict.counts["lost"],
        "duplicated": verdict.counts["duplicated"],
        "failed": verdict.counts["failed"], "skipped": verdict.counts["skipped"],
        "late_over_10s": verdict.counts["late"],
        "lateness_s": {"p50": _pct(lateness, 50), "p99": _pct(lateness, 99), "max": round(lateness[-1], 2) if lateness else None},
        "other_counts": {k: v for k, v in verdict.counts.items() if k.startswith(("duplicated (", "delivered, yet"))},
        "lateness_by_step_p50_p99": {k: (_pct(sorted(v), 50), _pct(sorted(v), 99)) for k, v in sorted(verdict.lateness_by_step.items())},
        # Rows for a channel the contact gave no consent to: each must end skipped, never reach the stub.
        "unplanned_message_rows": dict(Counter(f"{messages[m]['status']}: {reason_group(messages[m]['error'])}" for m in unexpected)),
        "stub_receipts_without_a_row": len(stray),
    }


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)


def print_report(result: dict[str, Any]) -> None:
    f = result["figures"]
    print(f"\n=== chaos soak, broker {result['broker']}: {result['plan']['registrations']} registrations, "
          f"scale {result['plan']['scale']}, seed {result['plan']['seed']}, {result['wall_seconds']} s ===")
    print("faults:")
    for fault in result["faults"]:
        detail = {k: v for k, v in fault.items() if k not in ("at", "t", "fault")}
        print(f"  {clock(fault['at'])} (+{fault['t']}s) {fault['fault']} {detail if detail else ''}")
    for key in ("expected", "delivered", "unfinished", "lost", "duplicated", "failed", "skipped", "late_over_10s", "lateness_s",
                "lateness_by_step_p50_p99", "not_planned_enrolled_after_due", "unplanned_message_rows", "stub_receipts_without_a_row",
                "message_rows_by_status", "stub_requests", "other_counts"):
        print(f"  {key:32} {f[key]}")
    for kind, reasons in result["reasons"].items():
        for reason, count in reasons.items():
            print(f"  {kind:8} {count:6}  {reason}")
    if result["examples"]:
        print("examples:")
    for kind, lines in result["examples"].items():
        print(f"  [{kind}]")
        for line in lines:
            print(f"    {line}")
    crashed = {k: v["crashes"] for k, v in result["processes"].items() if v["crashes"]}
    print(f"  processes that exited on their own: {crashed or 'none'}; settle: {result['settle']}")
