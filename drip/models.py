"""The domain: contacts (with a consent history), events, registrations, and the two
audit tables that double as the engine's state: Step (the durable timer) and Message."""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import models, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from drip.domain.validation import (
    normalize_phone,
    validate_email_address,
    validate_http_url,
    validate_no_control_characters,
    validate_phone,
    validate_text_line,
    validate_timezone,
)


def new_external_id() -> str:
    """For rows an operator creates by hand; producers send their own ids."""
    return f"drip-{uuid.uuid4().hex[:12]}"


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"


class Purpose(models.TextChoices):
    # About an event the contact registered for: sent whenever it is due.
    TRANSACTIONAL = "transactional", "Transactional"
    # Promotion: quiet hours and frequency caps apply.
    MARKETING = "marketing", "Marketing"


class Contact(models.Model):
    # The same input rules as the event API (drip/domain/validation.py), so the console's forms too.
    external_id = models.CharField(max_length=200, unique=True, default=new_external_id, validators=[validate_no_control_characters])
    email = models.EmailField(blank=True, validators=[validate_email_address])
    phone = models.CharField(max_length=20, blank=True, validators=[validate_phone], help_text="E.164, e.g. +14155550123")
    first_name = models.CharField(max_length=200, blank=True, validators=[validate_text_line])
    last_name = models.CharField(max_length=200, blank=True, validators=[validate_text_line])
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone], help_text="IANA name, e.g. America/New_York")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Set by an erasure (drip.engine.erasure): the personal fields are blank, the history stays.
    erased_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        if self.erased_at is not None:
            return f"erased contact #{self.pk}"
        name = f"{self.first_name} {self.last_name}".strip()
        return f"{name} <{self.email}>" if name else (self.email or self.external_id)

    def clean(self) -> None:
        # Store every number in E.164 whatever way it was typed.
        if self.phone:
            self.phone = normalize_phone(self.phone)

    def address_for(self, channel: str) -> str:
        return self.email if channel == Channel.EMAIL else self.phone


class ConsentRecord(models.Model):
    """One grant or revocation; the latest record per channel is the contact's consent."""

    class Source(models.TextChoices):
        API = "api", "Event API / enrollment"
        ADMIN = "admin", "Operator in the admin"
        RECIPIENT = "recipient", "The recipient (STOP, START, unsubscribe)"
        PROVIDER = "provider", "Provider report (bounce, complaint, opted out)"

    # PROTECT here and on every audit row below: deleting a person is an erasure
    # (drip.engine.erasure), which blanks their fields and keeps the history.
    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="consents")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    granted = models.BooleanField()
    source = models.CharField(max_length=20, choices=Source.choices)
    # Where exactly: "api:event.enrolled", "admin:alice", "twilio:STOP", "postmark:bounce"...
    detail = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["contact", "channel", "-created_at"])]

    def __str__(self) -> str:
        verb = "granted" if self.granted else "revoked"
        return f"{self.channel} {verb} by {self.source} {self.detail}".strip()

    @property
    def is_suppression(self) -> bool:
        """A revocation that came from the recipient or their provider: only they (or an
        operator with a reason) may lift it."""
        return not self.granted and self.source in (self.Source.RECIPIENT, self.Source.PROVIDER)


class Suppression(models.Model):
    """An address that must not be messaged on a channel, whoever's contact row holds it now
    or later: a recipient's opt-out (STOP, unsubscribe), a provider's report (hard bounce,
    complaint, landline, 21610) or an operator's record (an erasure). Kept by a keyed hash of
    the normalized address, so an erased person's row keeps refusing the address it no longer
    shows. Lifting sets `lifted_at` with who and why; drip.domain.consent.may_lift says who may."""

    class Source(models.TextChoices):
        RECIPIENT = "recipient", "The recipient (STOP, unsubscribe)"
        PROVIDER = "provider", "Provider report (bounce, complaint, landline, opted out)"
        OPERATOR = "operator", "An operator (erasure, recorded opt-out)"

    channel = models.CharField(max_length=10, choices=Channel.choices)
    address_hash = models.CharField(max_length=64, editable=False)
    # The normalized address, for operators; blank once the person is erased.
    address = models.CharField(max_length=254, blank=True)
    source = models.CharField(max_length=12, choices=Source.choices)
    # Where exactly: "twilio:STOP", "postmark:HardBounce", "unsubscribe:one-click", "erasure:alice"...
    detail = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.CharField(max_length=150, blank=True)
    lift_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "address_hash"], condition=models.Q(lifted_at__isnull=True),
                name="one_active_suppression_per_address",
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.address or '(erased)'}: {self.get_source_display()} {self.detail}".strip()

    @property
    def active(self) -> bool:
        return self.lifted_at is None


class AddressKey(models.Model):
    """The key of the suppressions' address hashes: made once per installation, in the
    database, so it outlives a SECRET_KEY rotation (which would otherwise make an erased
    address mailable again)."""

    key = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"address key made {self.created_at:%Y-%m-%d}"  # never the key itself


class Event(models.Model):
    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        CANCELLED = "cancelled", "Cancelled"
        COMPLETED = "completed", "Completed"

    external_id = models.CharField(max_length=200, unique=True, default=new_external_id, validators=[validate_no_control_characters])
    title = models.CharField(max_length=300, validators=[validate_text_line])
    starts_at = models.DateTimeField(
        "scheduled start", help_text="In UTC. Saving shows it in the event's own time zone; changing it re-plans the reminders."
    )
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    join_url = models.URLField(max_length=500, blank=True, validators=[validate_http_url])
    # Given with the completion: the post-event emails link them, and promise nothing without.
    recording_url = models.URLField(max_length=500, blank=True, validators=[validate_http_url])
    slides_url = models.URLField(max_length=500, blank=True, validators=[validate_http_url])
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.SCHEDULED)
    completed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-starts_at"]

    def __str__(self) -> str:
        """The start in the event's own zone (what the save banner shows: the time saved)."""
        if self.starts_at is None:
            return self.title
        try:
            local = self.starts_at.astimezone(ZoneInfo(self.timezone or "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            local = self.starts_at.astimezone(ZoneInfo("UTC"))
        return f"{self.title} ({local:%Y-%m-%d %H:%M} {local.tzname()})"


class Registration(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        CANCELLED = "cancelled", "Cancelled"

    external_id = models.CharField(max_length=200, unique=True, default=new_external_id, validators=[validate_no_control_characters])
    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="registrations")
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="registrations")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ACTIVE)
    attended = models.BooleanField(null=True, blank=True, help_text="Unknown until the event is completed.")
    # This registrant's own join link (Zoom's per-registrant links): used in place of the event's.
    join_url = models.URLField(max_length=500, blank=True, validators=[validate_http_url])
    created_at = models.DateTimeField(auto_now_add=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["contact", "event"], name="unique_registration_per_contact_event")
        ]

    def __str__(self) -> str:
        return f"{self.contact} → {self.event.title}"


# A timer fires a few milliseconds early at worst; a task arriving earlier than this is a
# stray delivery (a duplicate of an earlier task, or hosts whose clocks disagree).
EARLY_TOLERANCE = timedelta(seconds=1)
# A step run or a send claim lost this many times (its worker died each time) is what kills
# its worker (a bug): it is failed instead of run again (the reconciler and failover alike).
STEP_MAX_ATTEMPTS = 5
MAX_LOST_CLAIMS = 5


class WorkerQuerySet(models.QuerySet["Worker"]):
    """A worker's life, each change one UPDATE. Times are the database's clock (Now()), so
    hosts whose clocks disagree never make a live worker look dead."""

    def beat(self) -> int:
        """Alive: seen now. One taken for dead (a stalled heartbeat) is back in the count."""
        return self.update(seen_at=Now(), failed_over_at=None)

    def stop(self) -> int:
        """A clean shutdown: the broker got its unacknowledged tasks back (Redis restores them
        when the consumer closes, RabbitMQ at once), so there is nothing to take over."""
        return self.update(stopped_at=Now())

    def dead(self, after: float) -> WorkerQuerySet:
        """Silent for more than `after` seconds without saying goodbye, not yet taken over."""
        return self.filter(
            stopped_at__isnull=True, failed_over_at__isnull=True, seen_at__lt=Now() - timedelta(seconds=after)
        )

    def taken_over(self) -> int:
        return self.filter(failed_over_at__isnull=True).update(failed_over_at=Now())

    def forgotten(self, after: timedelta) -> WorkerQuerySet:
        """Long gone: whatever their rows still say about them is stale."""
        return self.filter(seen_at__lt=Now() - after)


class Worker(models.Model):
    """One run of a worker process (the one that talks to the broker), from start to exit:
    a restart on the same host is a new row, so a new process never vouches for the tasks
    its killed predecessor held. Its heartbeat (seen_at) is how failover tells it died."""

    name = models.CharField(max_length=200, help_text="Celery's node name, e.g. celery@host")
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Declared dead and its work handed to the others (drip/timer/failover.py).
    failed_over_at = models.DateTimeField(null=True, blank=True)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid}, started {self.started_at:%Y-%m-%d %H:%M:%S})"


def held_by_field() -> models.ForeignKey:
    """The worker whose consumer last received a task for the row (drip/timer/workers.py). No
    database constraint and no index: it is written on every received task, read only by
    failover, among the few open rows; a pruned Worker leaves a stale id that nothing reads."""
    return models.ForeignKey(
        Worker, null=True, blank=True, editable=False, on_delete=models.DO_NOTHING, db_constraint=False,
        db_index=False, related_name="+",
    )


def _hold(rows: models.QuerySet[Any], worker_id: int) -> int:
    """Mark these rows held by the worker, but for those another transaction holds locked
    (returns how many were marked). A worker's holds
    (drip/timer/workers.py) are written the moment its consumer receives a task, and a task that
    arrives at its due time is already running in a pool process: its transaction locks the
    same rows in its own order while the hold's UPDATE locks them in another, and PostgreSQL
    broke the deadlock by failing the step task (its steps then waited for the reconciler's
    grace, two minutes). A locked row is being run or claimed right now, so its hold is not
    needed; the hold skips it rather than wait for it (SKIP LOCKED is a no-op on SQLite). A
    row skipped that way and then left in a dead worker's memory is recovered by the
    reconciler after its grace instead of by the fast failover."""
    with transaction.atomic():  # FOR UPDATE, even in a subquery, needs one
        free = rows.select_for_update(skip_locked=True).values("pk")
        return rows.model._base_manager.filter(pk__in=free).update(held_by=worker_id)


class StepQuerySet(models.QuerySet["Step"]):
    """Every change of a step's status has a name here; each is one conditional UPDATE, so
    of two processes racing for a row exactly one wins, and the count says which."""

    def open(self) -> StepQuerySet:
        return self.filter(status__in=Step.OPEN)

    def claimed_by(self, token: str) -> StepQuerySet:
        return self.filter(claim_token=token)

    def claim_for_enqueue(self, token: str, now: datetime) -> int:
        """pending → enqueued: the dispatcher takes these to hand them to Celery."""
        return self.filter(status=Step.Status.PENDING).update(status=Step.Status.ENQUEUED, enqueued_at=now, claim_token=token)

    def rearm(self, token: str, now: datetime) -> int:
        """→ enqueued again, for work whose task was lost (the caller's filter says which).
        Held by nobody until a worker receives the new task: a second failover run racing
        this one no longer finds the row under the dead worker."""
        return self.update(status=Step.Status.ENQUEUED, enqueued_at=now, claim_token=token, held_by=None)

    def hold(self, worker_id: int) -> int:
        """A worker received a task for these steps (an ETA task waits in its memory). Rows
        another transaction holds locked are skipped, never waited for (see `_hold`)."""
        return _hold(self.filter(status__in=[Step.Status.ENQUEUED, Step.Status.RUNNING]), worker_id)

    def start_run(self, token: str, now: datetime, ready_until: datetime) -> int:
        """enqueued → running, for a step task; only steps due by `ready_until` (now, plus
        the lead a step is prepared with, plus the tolerance)."""
        return self.filter(status=Step.Status.ENQUEUED, due_at__lte=ready_until).update(
            status=Step.Status.RUNNING, started_at=now, attempts=F("attempts") + 1, claim_token=token
        )

    def finish_run(self, token: str, now: datetime) -> int:
        """running → done, only while this run still holds the step."""
        return self.filter(status=Step.Status.RUNNING, claim_token=token).update(status=Step.Status.DONE, finished_at=now)

    def cancel_open(self, reason: str, now: datetime) -> int:
        return self.open().update(status=Step.Status.CANCELLED, reason=reason, finished_at=now)

    def cancel_prepared(self, reason: str, now: datetime) -> int:
        """Done ahead of time (its messages made, none sent yet: the caller's filter) → cancelled."""
        return self.filter(status=Step.Status.DONE).update(status=Step.Status.CANCELLED, reason=reason, finished_at=now)

    def cancel_unfinished(self, reason: str, now: datetime) -> int:
        """Open or running → cancelled (a re-plan: a run in progress finishes only steps it
        still holds as running, so it leaves these alone)."""
        return self.filter(status__in=[*Step.OPEN, Step.Status.RUNNING]).update(
            status=Step.Status.CANCELLED, finished_at=now, reason=reason
        )

    def fail(self, reason: str, now: datetime) -> int:
        return self.update(status=Step.Status.FAILED, finished_at=now, reason=reason)

    def fail_repeated_crashes(self, now: datetime) -> int:
        """Running again after STEP_MAX_ATTEMPTS runs that never finished → failed."""
        return self.filter(status=Step.Status.RUNNING, attempts__gte=STEP_MAX_ATTEMPTS).fail(
            f"step task did not finish in {STEP_MAX_ATTEMPTS} attempts; see the worker log", now
        )

    def due_now(self, now: datetime) -> int:
        """Open → pending and due now (run now, fast-forward). An enqueued step's task
        still waits in the broker for its old ETA; when it fires it finds the step no longer
        enqueued (or already done) and does nothing."""
        return self.open().update(status=Step.Status.PENDING, due_at=now, enqueued_at=None, claim_token="")


class Step(models.Model):
    """One planned funnel step of one registration. The row is the timer (due_at), the
    claim token (status, changed only by conditional updates) and the audit trail (reason)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ENQUEUED = "enqueued", "Enqueued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        SKIPPED = "skipped", "Skipped"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    OPEN = (Status.PENDING, Status.ENQUEUED)

    # No index of its own: unique_step_per_plan starts with it and serves every lookup by
    # registration; a second index only slows the bulk planning (15 % at 100,000).
    registration = models.ForeignKey(Registration, on_delete=models.PROTECT, related_name="steps", db_index=False)
    funnel = models.CharField(max_length=20)
    key = models.CharField(max_length=40)
    plan_version = models.PositiveIntegerField(default=1)
    # The event time (start, or completion) this step was planned from: a step whose anchor
    # no longer matches the event was planned for an old time and does nothing.
    anchor_at = models.DateTimeField()
    due_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    reason = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Set with every claim (the dispatcher's or reconciler's enqueue, the step task's run),
    # so a claim can read back exactly the rows it won, on any database.
    claim_token = models.CharField(max_length=32, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    held_by = held_by_field()

    objects = StepQuerySet.as_manager()

    class Meta:
        ordering = ["due_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["registration", "key", "plan_version"], name="unique_step_per_plan")
        ]
        indexes = [models.Index(fields=["status", "due_at"])]

    def __str__(self) -> str:
        return f"{self.funnel}/{self.key} v{self.plan_version} for registration {self.registration_id}"


class MessageQuerySet(models.QuerySet["Message"]):
    """Every change of a message's status has a name here (the sender's two guarded writes
    per attempt are its own, in sender.py); each is one conditional UPDATE."""

    def unsent(self) -> MessageQuerySet:
        """Not yet at a provider: queued, or claimed by a sender that has not yet recorded
        its provider call."""
        return self.filter(
            models.Q(status=Message.Status.QUEUED) | models.Q(status=Message.Status.SENDING, sending_at__isnull=True)
        )

    def withdraw(self, reason: str) -> int:
        """Skip every unsent message here. A conditional update, so a sender in the middle
        of a batch finds the row no longer its own and sends nothing; a call already
        recorded goes on (it may be at the provider already)."""
        return self.unsent().update(status=Message.Status.SKIPPED, error=reason, updated_at=timezone.now())

    def withdraw_for_revocation(self, reason: str, now: datetime) -> int:
        """A revoked consent: withdraw what a sender may be about to send (due now, or
        claimed). A message waiting for a later time (prepared ahead of its step's due time,
        a retry's backoff) is left to the sender's consent check at that time, so a consent
        given back meanwhile (STOP, then START) still counts."""
        later = models.Q(status=Message.Status.QUEUED, next_attempt_at__gt=now + EARLY_TOLERANCE)
        return self.exclude(later).withdraw(reason)

    def claim(self, token: str, now: datetime) -> int:
        """queued → sending, for a send task; not before the next attempt is due (a
        duplicate of an earlier attempt's task must not jump a retry's backoff)."""
        return self.filter(status=Message.Status.QUEUED, next_attempt_at__lte=now + EARLY_TOLERANCE).update(
            status=Message.Status.SENDING, sending_at=None, verify_at=None, attempts=F("attempts") + 1, updated_at=now,
            claim_token=token,
        )

    def stuck_before_call(self, stale: datetime) -> MessageQuerySet:
        """Claimed long ago and no provider call recorded: its task died before sending."""
        return self.filter(status=Message.Status.SENDING, sending_at__isnull=True, updated_at__lt=stale)

    def hand_back(self, token: str, now: datetime) -> int:
        """Claimed by `token`, never tried: queued again, due now; the claim is not an attempt."""
        return self.filter(status=Message.Status.SENDING, claim_token=token, sending_at__isnull=True).update(
            status=Message.Status.QUEUED, attempts=F("attempts") - 1, next_attempt_at=now, updated_at=now
        )

    def recover_lost_claims(self, stale: datetime, now: datetime) -> int:
        """Stuck before the provider call → queued: not an attempt, but a lost claim."""
        return self.stuck_before_call(stale).update(
            status=Message.Status.QUEUED, next_attempt_at=now, updated_at=now,
            attempts=F("attempts") - 1, lost_claims=F("lost_claims") + 1,
        )

    def hold(self, worker_id: int) -> int:
        """A worker received a send task for these (an ETA retry, or a batch about to run).
        Rows another transaction holds locked are skipped, never waited for (`_hold`)."""
        return _hold(self.unsent().filter(held_until__isnull=True), worker_id)

    def take_back_from(self, workers: list[int], token: str, now: datetime) -> int:
        """Held by a dead worker and not at a provider → queued under `token` (so this run
        publishes exactly the rows it took) and held by nobody. One stuck before its call
        counts a lost claim, not an attempt; a recorded provider call (sending_at) is never
        taken: it may have reached the provider."""
        mine = self.filter(held_by__in=workers)
        stuck = mine.filter(status=Message.Status.SENDING, sending_at__isnull=True).update(
            status=Message.Status.QUEUED, next_attempt_at=now, updated_at=now, claim_token=token, held_by=None,
            attempts=F("attempts") - 1, lost_claims=F("lost_claims") + 1,
        )
        waiting = mine.filter(status=Message.Status.QUEUED, held_until__isnull=True).update(
            claim_token=token, held_by=None, updated_at=now
        )
        return stuck + waiting

    def overdue_now(self, now: datetime) -> int:
        """Queued and past due: due now, with a fresh next_attempt_at so the reconciler's
        next run leaves them be."""
        return self.filter(status=Message.Status.QUEUED, next_attempt_at__lt=now).update(next_attempt_at=now, updated_at=now)

    def fail_repeated_crashes(self, now: datetime) -> int:
        """Stuck before its provider call for the MAX_LOST_CLAIMS-th time → failed."""
        return self.filter(
            status=Message.Status.SENDING, sending_at__isnull=True, lost_claims__gte=MAX_LOST_CLAIMS - 1
        ).update(
            status=Message.Status.FAILED, error=f"send task did not finish in {MAX_LOST_CLAIMS} attempts; see the worker log",
            error_class=Message.ErrorClass.CRASHED, updated_at=now,
        )

    def interrupted_in_call(self, cutoff: datetime) -> MessageQuerySet:
        """The provider call began before `cutoff` and never recorded an outcome (nor was
        handed to verification)."""
        return self.filter(status=Message.Status.SENDING, sending_at__lt=cutoff, verify_at__isnull=True)

    # --- verifying: `sending` with a provider call recorded and `verify_at` set ----------
    # The outcome of the call is unknown (a read timeout, a worker lost in the call): the
    # provider is asked whether it accepted the message (drip/delivery/verify.py). Not a status of its
    # own: the statuses are a public contract, and the message *is* still being sent.

    def verify_later(self, at: datetime, error: str, now: datetime) -> int:
        """A recorded provider call without an outcome → verifying, first lookup at `at`."""
        return self.filter(status=Message.Status.SENDING, sending_at__isnull=False).update(
            verify_at=at, verify_attempts=0, error=error, updated_at=now
        )

    def verifying(self) -> MessageQuerySet:
        return self.filter(status=Message.Status.SENDING, sending_at__isnull=False, verify_at__isnull=False)

    def claim_verify(self, token: str, lease_until: datetime, now: datetime) -> int:
        """Due for a lookup → held by one verify task (`token`) until `lease_until`: a
        duplicate task finds it not due; a task lost with it is published again by the
        reconciler once the lease is long past."""
        return self.verifying().filter(verify_at__lte=now + EARLY_TOLERANCE).update(
            claim_token=token, verify_at=lease_until, verify_attempts=F("verify_attempts") + 1, updated_at=now
        )

    def verify_again(self, at: datetime, now: datetime) -> int:
        """Still verifying: the next lookup at `at` (too early to believe "not found", or the
        lookup itself failed)."""
        return self.verifying().update(verify_at=at, updated_at=now)

    def verify_overdue_now(self, now: datetime) -> int:
        """Verifying and long past its lookup time (the task was lost): due now, so the
        reconciler's next run leaves it be until it is overdue again."""
        return self.verifying().filter(verify_at__lt=now).update(verify_at=now, updated_at=now)

    def verified_sent(self, provider_message_id: str, now: datetime) -> int:
        """The provider has it: sent, at the time of the call."""
        return self.verifying().update(
            status=Message.Status.SENT, provider_message_id=provider_message_id, sent_at=F("sending_at"),
            verify_at=None, error="", updated_at=now,
        )

    def verified_not_sent(self, error: str, now: datetime) -> int:
        """The provider never got it: queued again, due now; the lost call was an attempt."""
        return self.verifying().update(
            status=Message.Status.QUEUED, sending_at=None, verify_at=None, next_attempt_at=now, rate_slot_at=None,
            error=error, updated_at=now,
        )

    def verify_failed(self, error: str, error_class: str, now: datetime) -> int:
        """Verifying → failed with the reason: the outcome cannot be told (no lookup for this
        provider, or it kept failing), or not found with no attempt left."""
        return self.verifying().update(
            status=Message.Status.FAILED, verify_at=None, error=error, error_class=error_class, updated_at=now
        )

    def hold_until(self, at: datetime, error: str, now: datetime) -> int:
        """Queued to wait in the database, not the broker, until `at` (the end of quiet
        hours: an ETA task that long would be delivered again every visibility timeout)."""
        return self.update(
            status=Message.Status.QUEUED, sending_at=None, next_attempt_at=at, held_until=at, rate_slot_at=None,
            error=error, attempts=F("attempts") - 1, updated_at=now,
        )

    def wake_held(self, token: str, until: datetime) -> int:
        """Held past the enqueue horizon (quiet hours) and now coming within it: marked with
        `token` so the dispatcher publishes exactly these, once."""
        return self.filter(status=Message.Status.QUEUED, held_until__isnull=False, next_attempt_at__lte=until).update(
            claim_token=token, held_until=None
        )

    def mark_first(self, column: str, at: datetime) -> int:
        """A first open or click (a delivery report): only the first one is kept."""
        return self.filter(**{f"{column}__isnull": True}).update(**{column: at, "updated_at": timezone.now()})

    def advance(self, status: str, sources: Iterable[str], **fields: Any) -> int:
        """A provider's report moves the message forwards, from one of `sources` only: a
        report that arrives out of order never moves it back."""
        return self.filter(status__in=list(sources)).update(status=status, updated_at=timezone.now(), **fields)

    def requeue_failed(self, now: datetime) -> int:
        """failed → queued with a fresh budget (attempts and lost claims): an operator's call."""
        return self.filter(status=Message.Status.FAILED).update(
            status=Message.Status.QUEUED, error_class="", attempts=0, lost_claims=0, verify_attempts=0, sending_at=None,
            next_attempt_at=now, updated_at=now,
        )


class Message(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"
        BOUNCED = "bounced", "Bounced"

    class ErrorClass(models.TextChoices):
        """Why a message failed, for operators' filters and the metrics (`error` says it in words)."""

        PERMANENT = "permanent", "Permanent provider error"
        GAVE_UP = "gave_up", "Gave up after the attempts"
        OUTCOME_UNKNOWN = "outcome_unknown", "Outcome unknown"
        DELIVERY_REPORT = "delivery_report", "Failed by a delivery report"
        RENDER = "render", "Template did not render"
        CRASHED = "crashed", "Send task kept crashing"

    # Indexed by unique_message_per_step_channel, which starts with it.
    step = models.ForeignKey(Step, null=True, blank=True, on_delete=models.PROTECT, related_name="messages", db_index=False)
    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="messages")
    registration = models.ForeignKey(Registration, null=True, blank=True, on_delete=models.PROTECT, related_name="messages")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    template_type = models.CharField(max_length=60)
    # The caller's label for a direct send (the seed's stepType); funnel messages have a step.
    step_type = models.CharField(max_length=60, blank=True)
    # From the funnel step (direct sends are transactional): marketing ones are paced.
    purpose = models.CharField(max_length=16, choices=Purpose.choices, default=Purpose.TRANSACTIONAL)
    # For direct sends: the caller's key, so repeating a request sends once.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    to = models.CharField(max_length=254, blank=True)
    subject = models.TextField(blank=True)
    body = models.TextField(blank=True)
    html = models.TextField(blank=True)
    # Set when the step task rendered subject/body/html ahead of the due time: the fingerprint
    # of what they were rendered from (drip.delivery.rendering). The sender uses them as they are only
    # while that still matches; an SMS's opt-out notice is decided at the send.
    rendered_from = models.CharField(max_length=32, blank=True)
    # SMS only: what the carrier bills (GSM-7 or UCS-2, and how many segments).
    sms_encoding = models.CharField(max_length=8, blank=True)
    sms_segments = models.PositiveSmallIntegerField(null=True, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True, db_index=True)
    error = models.TextField(blank=True)
    error_class = models.CharField(max_length=20, choices=ErrorClass.choices, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    # When the next attempt is due: the reconciler re-enqueues a queued message past it.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # Set while a queued message waits in the database, not the broker, beyond the enqueue
    # horizon (quiet hours): the dispatcher publishes it when it comes within reach.
    held_until = models.DateTimeField(null=True, blank=True)
    # A send slot this message already holds under the shared rate limit (see ratelimit.py).
    rate_slot_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Set right before the provider call: a message stuck in "sending" without it never
    # reached the provider and is safe to send again; with it, the outcome is unknown.
    sending_at = models.DateTimeField(null=True, blank=True)
    # Set with each claim by a send task: the rows a batch won, and the guard on every later
    # write of that attempt (a claim the reconciler took back no longer matches).
    claim_token = models.CharField(max_length=32, blank=True)
    # Claims lost before the provider call (the worker died holding it); past a few, the
    # message itself is what kills its worker, and it is failed instead of retried again.
    lost_claims = models.PositiveSmallIntegerField(default=0)
    # Verifying (status `sending`, a call recorded, the outcome unknown): when the provider is
    # next asked whether it accepted the message, and how many lookups were made so far.
    verify_at = models.DateTimeField(null=True, blank=True)
    verify_attempts = models.PositiveSmallIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # The first open / click an ESP reported (drip/doors/inbound/reports.py); later ones are rows
    # in DeliveryReport only.
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    held_by = held_by_field()

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        # Anything that reaches a provider from the console (run now, send again, a test send).
        permissions = [("send_messages", "Can send messages (run now, send again, test sends)")]
        constraints = [models.UniqueConstraint(fields=["step", "channel"], name="unique_message_per_step_channel")]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            # "Has an SMS of ours reached this number?" (the first SMS carries the opt-out
            # notice; rendering.numbers_reached_before), asked for every send batch of SMS:
            # without it, a scan of every message ever sent.
            models.Index(fields=["to"], name="message_sms_reached",
                         condition=models.Q(channel="sms", status__in=["sent", "delivered"])),
        ]

    def __str__(self) -> str:
        return f"{self.template_type} {self.channel} to contact {self.contact_id} ({self.status})"

    def recipient_zone(self) -> str:
        """The zone times are shown and quiet hours are kept in: the contact's, else the event's."""
        event = self.registration.event if self.registration is not None else None
        return self.contact.timezone or (event.timezone if event is not None else "UTC")


class DeliveryReport(models.Model):
    """One report a provider sent about a Message (anymail tracking, Twilio status). The
    audit of what we heard, whether or not it changed the Message (`applied`)."""

    class Kind(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        OPENED = "opened", "Opened"
        CLICKED = "clicked", "Clicked"
        BOUNCED = "bounced", "Bounced (hard)"
        SOFT_BOUNCED = "soft_bounced", "Soft bounce"
        DEFERRED = "deferred", "Deferred"
        COMPLAINED = "complained", "Spam complaint"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed at the ESP"
        SUBSCRIBED = "subscribed", "Re-subscribed at the ESP"
        REJECTED = "rejected", "Rejected"
        FAILED = "failed", "Failed"
        UNDELIVERED = "undelivered", "Undelivered"
        OTHER = "other", "Other"

    # Indexed by the (message, occurred_at) index, which starts with it.
    message = models.ForeignKey(Message, on_delete=models.PROTECT, related_name="reports", db_index=False)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    occurred_at = models.DateTimeField(help_text="When the provider says it happened (else when we heard of it).")
    received_at = models.DateTimeField(default=timezone.now)
    provider = models.CharField(max_length=40)
    provider_event_id = models.CharField(max_length=200, blank=True)
    # The provider event id when there is one, else kind + message + time: a repeated report
    # (providers retry webhooks) collides here and changes nothing.
    dedupe_key = models.CharField(max_length=300, unique=True)
    detail = models.TextField(blank=True)
    # Whether this report changed the Message (a late "sent" after "delivered" does not).
    applied = models.BooleanField(default=False)
    payload = models.TextField(blank=True, help_text="The provider's payload, trimmed.")

    class Meta:
        ordering = ["occurred_at", "id"]
        indexes = [models.Index(fields=["message", "occurred_at"])]

    def __str__(self) -> str:
        return f"{self.kind} for message {self.message_id} at {self.occurred_at:%Y-%m-%d %H:%M:%S}"


class InboundSms(models.Model):
    """Every SMS a recipient sent us: keywords are acted on at once; anything else waits in
    the admin inbox for an operator ("please stop texting me" is an opt-out too)."""

    class Kind(models.TextChoices):
        OPT_OUT = "opt_out", "Opt-out keyword"
        OPT_IN = "opt_in", "Opt-in keyword"
        HELP = "help", "Help keyword"
        OTHER = "other", "Other message"

    from_number = models.CharField(max_length=32)
    to_number = models.CharField(max_length=32, blank=True)
    body = models.TextField(blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    # Twilio retries a webhook it got no answer for: the same sid is stored once.
    provider_sid = models.CharField(max_length=64, null=True, blank=True, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.OTHER)
    handled = models.BooleanField(default=False)
    opted_out = models.BooleanField(default=False)
    handled_by = models.CharField(max_length=150, blank=True)
    handled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name = "inbound SMS"
        verbose_name_plural = "inbound SMS"
        indexes = [models.Index(fields=["handled", "-received_at"])]

    def __str__(self) -> str:
        return f"{self.from_number}: {self.body[:40]}"


class ConsoleJobQuerySet(models.QuerySet["ConsoleJob"]):
    """A job's transitions, each one conditional UPDATE (as for steps and messages)."""

    def claim(self, token: str, now: datetime, stale: datetime) -> int:
        """Queued, or left running by a worker that died before its transaction committed
        (nothing of it was written: the work and its "done" commit together)."""
        return self.filter(
            models.Q(status=ConsoleJob.Status.QUEUED) | models.Q(status=ConsoleJob.Status.RUNNING, started_at__lt=stale)
        ).update(status=ConsoleJob.Status.RUNNING, claim_token=token, started_at=now, attempts=F("attempts") + 1)

    def finish(self, token: str, done: int, result: dict[str, Any], now: datetime) -> int:
        return self.filter(status=ConsoleJob.Status.RUNNING, claim_token=token).update(
            status=ConsoleJob.Status.DONE, done=done, result=result, error="", finished_at=now
        )

    def fail(self, token: str, error: str, now: datetime) -> int:
        return self.filter(status=ConsoleJob.Status.RUNNING, claim_token=token).update(
            status=ConsoleJob.Status.FAILED, error=error[:2000], finished_at=now
        )


class ConsoleJob(models.Model):
    """Work an operator started in the console that is too large for one request (a CSV
    import, completing a large event). The row carries everything the task needs (the task
    carries only its id) and, once finished, the outcome the progress page shows."""

    class Kind(models.TextChoices):
        IMPORT = "import", "CSV import"
        COMPLETE = "complete", "Complete event"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    FINISHED = (Status.DONE, Status.FAILED)

    kind = models.CharField(max_length=12, choices=Kind.choices)
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="console_jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    # The validated input: intake items for an import; attendance and options for a completion.
    payload = models.JSONField(default=dict)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0, help_text="Written when the job finishes; live progress is in Redis.")
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    claim_token = models.CharField(max_length=36, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = ConsoleJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in self.FINISHED
