"""The domain: contacts (with a consent history), events, registrations, and the two
audit tables that double as the engine's state: Step (the durable timer) and Message."""
from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from .validation import normalize_phone, validate_phone, validate_timezone


def new_external_id() -> str:
    """For rows an operator creates by hand; producers send their own ids."""
    return f"drip-{uuid.uuid4().hex[:12]}"


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"


class Contact(models.Model):
    external_id = models.CharField(max_length=200, unique=True, default=new_external_id)
    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=20, blank=True, validators=[validate_phone], help_text="E.164, e.g. +14155550123")
    first_name = models.CharField(max_length=200, blank=True)
    last_name = models.CharField(max_length=200, blank=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone], help_text="IANA name, e.g. America/New_York")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
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

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="consents")
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


class Event(models.Model):
    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        CANCELLED = "cancelled", "Cancelled"
        COMPLETED = "completed", "Completed"

    external_id = models.CharField(max_length=200, unique=True, default=new_external_id)
    title = models.CharField(max_length=300)
    starts_at = models.DateTimeField(
        "scheduled start", help_text="In UTC. Saving shows it in the event's own time zone; changing it re-plans the reminders."
    )
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    join_url = models.URLField(max_length=500, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.SCHEDULED)
    completed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-starts_at"]

    def __str__(self) -> str:
        return f"{self.title} ({self.starts_at:%Y-%m-%d %H:%M} UTC)"


class Registration(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        CANCELLED = "cancelled", "Cancelled"

    external_id = models.CharField(max_length=200, unique=True, default=new_external_id)
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="registrations")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="registrations")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ACTIVE)
    attended = models.BooleanField(null=True, blank=True, help_text="Unknown until the event is completed.")
    created_at = models.DateTimeField(auto_now_add=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["contact", "event"], name="unique_registration_per_contact_event")
        ]

    def __str__(self) -> str:
        return f"{self.contact} → {self.event.title}"


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
    registration = models.ForeignKey(Registration, on_delete=models.CASCADE, related_name="steps", db_index=False)
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
    dispatch_token = models.CharField(max_length=32, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["due_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["registration", "key", "plan_version"], name="unique_step_per_plan")
        ]
        indexes = [models.Index(fields=["status", "due_at"])]

    def __str__(self) -> str:
        return f"{self.funnel}/{self.key} v{self.plan_version} for registration {self.registration_id}"


class MessageQuerySet(models.QuerySet):
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


class Message(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"
        BOUNCED = "bounced", "Bounced"

    # Indexed by unique_message_per_step_channel, which starts with it.
    step = models.ForeignKey(Step, null=True, blank=True, on_delete=models.CASCADE, related_name="messages", db_index=False)
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="messages")
    registration = models.ForeignKey(Registration, null=True, blank=True, on_delete=models.CASCADE, related_name="messages")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    template_type = models.CharField(max_length=60)
    # The caller's label for a direct send (the seed's stepType); funnel messages have a step.
    step_type = models.CharField(max_length=60, blank=True)
    # For direct sends: the caller's key, so repeating a request sends once.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    to = models.CharField(max_length=254, blank=True)
    subject = models.TextField(blank=True)
    body = models.TextField(blank=True)
    html = models.TextField(blank=True)
    # SMS only: what the carrier bills (GSM-7 or UCS-2, and how many segments).
    sms_encoding = models.CharField(max_length=8, blank=True)
    sms_segments = models.PositiveSmallIntegerField(null=True, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True, db_index=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    # When the next attempt is due: the reconciler re-enqueues a queued message past it.
    next_attempt_at = models.DateTimeField(default=timezone.now)
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
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["step", "channel"], name="unique_message_per_step_channel")]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.template_type} {self.channel} to contact {self.contact_id} ({self.status})"
