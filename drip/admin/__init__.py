"""The operator's console: one AdminSite (drip/admin/site.py) and every table on it, one
module per model. Staff act by Django permission (docs/security.md, "Who can do what"): viewing
changes nothing, every action that changes data needs the model's change permission, and
anything that reaches a provider needs `send` (drip.send_messages); every such action leaves
an admin-log entry (drip/doors/console/audit.py)."""
from __future__ import annotations

from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib.admin.models import LogEntry
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django_celery_beat import admin as beat
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from drip.admin.audit import LogEntryAdmin
from drip.admin.base import superusers_only
from drip.admin.contacts import ContactAdmin
from drip.admin.events import EventAdmin
from drip.admin.inbound import InboundSmsAdmin
from drip.admin.jobs import ConsoleJobAdmin
from drip.admin.messages import MessageAdmin
from drip.admin.registrations import RegistrationAdmin
from drip.admin.site import site
from drip.admin.steps import StepAdmin
from drip.admin.suppressions import SuppressionAdmin
from drip.models import ConsoleJob, Contact, Event, InboundSms, Message, Registration, Step, Suppression

site.register(Contact, ContactAdmin)
site.register(Event, EventAdmin)
site.register(Registration, RegistrationAdmin)
site.register(Step, StepAdmin)
site.register(Message, MessageAdmin)
site.register(Suppression, SuppressionAdmin)
site.register(InboundSms, InboundSmsAdmin)
site.register(ConsoleJob, ConsoleJobAdmin)

# For superusers only: staff accounts and groups (whoever may edit a user may grant any
# permission, superuser status included), the admin log as a list, the beat schedule (where
# the dispatcher can be switched off) and the login lockouts (deleting one unlocks an account).
site.register(User, superusers_only(UserAdmin))
site.register(Group, superusers_only(GroupAdmin))
site.register(LogEntry, LogEntryAdmin)
site.register(PeriodicTask, superusers_only(beat.PeriodicTaskAdmin))
site.register(IntervalSchedule, superusers_only(beat.IntervalScheduleAdmin))
site.register(CrontabSchedule, superusers_only(beat.CrontabScheduleAdmin))
site.register(SolarSchedule, superusers_only(beat.SolarScheduleAdmin))
site.register(ClockedSchedule, superusers_only(beat.ClockedScheduleAdmin))
site.register(AccessAttempt, superusers_only(AccessAttemptAdmin))
site.register(AccessLog, superusers_only(AccessLogAdmin))
site.register(AccessFailureLog, superusers_only(AccessFailureLogAdmin))

__all__ = ["site"]
