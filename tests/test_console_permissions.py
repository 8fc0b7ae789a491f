"""Who may do what in the console (docs/security.md): a view-only user sees
every page and changes nothing, through every action and custom view of every table (read
from the site's own registry, so a new one cannot escape); anything that reaches a provider
needs drip.send_messages; failed logins lock an account out; the demo superuser exists only
under DEBUG."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db.models import Model
from django.test import RequestFactory
from django.urls import URLPattern, reverse
from django.utils import timezone

from drip.admin import site
from drip.domain.consent import record_consent
from drip.models import (
    Channel,
    ConsentRecord,
    ConsoleJob,
    Contact,
    DeliveryReport,
    InboundSms,
    Message,
    Step,
    Suppression,
)
from tests.factories import enroll, make_contact, make_event

# on_commit must run (a publish would happen there): no test transaction around these tests.
pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def user_with(username: str, codenames: list[str], email: str = "") -> Any:
    user = User.objects.create_user(username, email or f"{username}@example.com", "a-long-passphrase-42", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="drip", codename__in=codenames))
    return user


def drip_codenames(prefix: str) -> list[str]:
    return list(Permission.objects.filter(content_type__app_label="drip", codename__startswith=prefix)
                .values_list("codename", flat=True))


@pytest.fixture
def world() -> dict[str, Any]:
    """One row at least of every table the console shows, and what its actions act on."""
    contact = make_contact()
    event = make_event()
    other = make_event()
    registration = enroll(contact, event)
    failed = Message.objects.create(contact=contact, registration=registration, channel=Channel.EMAIL,
                                    template_type="welcome", to=contact.email, status=Message.Status.FAILED,
                                    error="outcome unknown", error_class=Message.ErrorClass.OUTCOME_UNKNOWN)
    DeliveryReport.objects.create(message=failed, channel=Channel.EMAIL, kind=DeliveryReport.Kind.BOUNCED,
                                  occurred_at=timezone.now(), provider="postmark", dedupe_key="w1")
    stopped = make_contact()
    record_consent(stopped, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    InboundSms.objects.create(from_number=contact.phone, body="please stop", provider_sid="SMw1")
    ConsoleJob.objects.create(kind=ConsoleJob.Kind.COMPLETE, event=event, status=ConsoleJob.Status.RUNNING,
                              started_at=timezone.now() - timedelta(days=1), total=1)
    boss = User.objects.create_superuser("boss", "boss@example.com", "a-long-passphrase-42")
    LogEntry.objects.log_actions(boss.pk, [event], CHANGE, change_message="seeded")
    return {"contact": contact, "event": event, "other": other, "registration": registration, "failed": failed,
            "boss": boss}


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row of every drip table, the admin log and the users: what "nothing changed" means."""
    models: list[type[Model]] = [*apps.get_app_config("drip").get_models(), LogEntry, User]
    return {m._meta.label: list(m._default_manager.order_by("pk").values()) for m in models}


def request_as(user: Any) -> Any:
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def custom_urls(model_admin: admin.ModelAdmin) -> list[URLPattern]:
    """The ModelAdmin's own views: its get_urls() minus Django's standard ones."""
    standard = {p.name for p in admin.ModelAdmin.get_urls(model_admin)}
    return [p for p in model_admin.get_urls() if isinstance(p, URLPattern) and p.name not in standard]


def kitchen_sink(world: dict[str, Any], action: str, selected: list[Any]) -> dict[str, Any]:
    """Every field any action's or custom view's form asks for, filled in so that it would act."""
    return {
        "action": action, "_selected_action": selected, "index": "0", "apply": "1", "confirm": "1", "post": "yes",
        "retry": "1", "send_test": "1", "template": "welcome:email", "event": world["other"].pk,
        "reason": "the recipient asked us on the phone", "csv_text": "email\nnew-person@example.com\n",
        "attended": [world["registration"].pk], "ended_early": "on",
    }


def test_every_console_action_declares_the_permission_it_needs():
    """Django hides an action whose permissions the user lacks, and runs none it hid."""
    for model, model_admin in site._registry.items():
        if model._meta.app_label != "drip":
            continue
        for name in model_admin.actions or []:
            func = getattr(model_admin, name) if isinstance(name, str) else name
            assert getattr(func, "allowed_permissions", None), f"{model.__name__}.{name} declares no permission"


def test_a_view_only_user_sees_every_page_and_changes_nothing(client, world, published):
    viewer = user_with("viewer", drip_codenames("view_"))
    client.force_login(viewer)
    before, published_before, tried = snapshot(), len(published), []
    for model, model_admin in site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        may_view = model_admin.has_view_permission(request_as(viewer))
        assert may_view == (model._meta.app_label == "drip"), info  # superusers' tables excepted
        changelist = reverse("admin:{}_{}_changelist".format(*info))
        assert client.get(changelist).status_code == (200 if may_view else 403), info
        objects = list(model._default_manager.all())
        assert objects or model._meta.app_label != "drip", f"the world has no {model.__name__}"
        if objects:
            change = reverse("admin:{}_{}_change".format(*info), args=[objects[0].pk])
            assert client.get(change).status_code == (200 if may_view else 403), info
            assert client.post(change, {}).status_code == 403, info  # nobody edits a row by hand either
        offered = model_admin.get_actions(request_as(viewer)) if may_view else {}
        for action in model_admin.get_actions(request_as(world["boss"])):
            assert action not in offered, f"{info}: {action} offered to a view-only user"
            for selected in ([o.pk for o in objects], [objects[0].pk] if objects else []):  # some act on one only
                response = client.post(changelist, kitchen_sink(world, action, selected))
                assert response.status_code in (200, 302, 403), (info, action, response.status_code)
            tried.append(action)
        for pattern in custom_urls(model_admin):
            kwargs = {name: objects[0].pk for name in pattern.pattern.converters}
            url = reverse(f"admin:{pattern.name}", kwargs=kwargs)
            assert client.get(url).status_code in (200, 403), url
            assert client.post(url, kitchen_sink(world, "", [])).status_code == 403, url
            tried.append(str(pattern.name))
    assert {"run_now", "send_again", "cancel_events", "move_to_event", "record_as_opt_out", "lift_suppressions",
            "erase_contacts", "drip_message_preview", "drip_consolejob_progress", "drip_contact_import"} <= set(tried)
    assert snapshot() == before
    assert published[published_before:] == []


def test_sending_needs_the_send_permission_not_only_change(client, world, published, settings):
    """Change on steps and messages is not enough to reach a provider: run now, send again
    and the preview's test send need drip.send_messages."""
    settings.DRIP_RATE_LIMITS = {Channel.EMAIL: 0.0, Channel.SMS: 0.0}
    editor = user_with("editor", [*drip_codenames("view_"), "change_step", "change_message"])
    step = Step.objects.filter(registration=world["registration"], status__in=Step.OPEN).first()
    assert step is not None
    run_now = {"action": "run_now", "_selected_action": [step.pk]}
    send_again = {"action": "send_again", "_selected_action": [world["failed"].pk]}
    test_send = {"template": "welcome:email", "send_test": "1"}
    client.force_login(editor)
    before, published_before = snapshot(), len(published)
    assert "run_now" not in site._registry[Step].get_actions(request_as(editor))
    client.post("/admin/drip/step/", run_now)
    client.post("/admin/drip/message/", send_again)
    assert client.post("/admin/drip/message/preview/", test_send).status_code == 403
    assert snapshot() == before and published[published_before:] == []

    sender = user_with("sender", [*drip_codenames("view_"), "send_messages"])
    client.force_login(sender)
    assert client.post("/admin/drip/step/", run_now).status_code == 302
    assert client.post("/admin/drip/message/", send_again).status_code == 302
    assert client.post("/admin/drip/message/preview/", test_send).status_code == 200
    world["failed"].refresh_from_db()
    assert world["failed"].status == Message.Status.QUEUED
    assert Message.objects.filter(step_type="test", to="sender@example.com").exists()
    names = [name for name, _, _ in published[published_before:]]
    assert any("step" in n for n in names) and any("send" in n for n in names), names


def test_repeated_failed_logins_lock_the_account_out(client, db):
    User.objects.create_superuser("target", "target@example.com", "the-right-passphrase-42")
    for _ in range(25):
        wrong = client.post("/admin/login/?next=/admin/", {"username": "target", "password": "guess"})
        assert wrong.status_code in (200, 429)  # the form again, then the lockout
        assert "_auth_user_id" not in client.session
    right = client.post("/admin/login/?next=/admin/", {"username": "target", "password": "the-right-passphrase-42"})
    assert right.status_code == 429 and "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302  # still the login page
    # Another account is not locked by the first one's failures (the lockout is by username).
    User.objects.create_superuser("other", "other@example.com", "the-right-passphrase-42")
    other = client.post("/admin/login/?next=/admin/", {"username": "other", "password": "the-right-passphrase-42"})
    assert other.status_code == 302 and "_auth_user_id" in client.session


def test_the_password_validators_refuse_a_weak_password():
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    for weak in ("admin", "password123", "12345678901"):
        with pytest.raises(ValidationError):
            validate_password(weak)
    validate_password("correct horse battery staple 42")


def test_the_demo_superuser_exists_only_under_debug(db, settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG=1"):
        call_command("bootstrap_demo")
    assert not User.objects.exists() and not Contact.objects.exists()
    settings.DEBUG = True
    call_command("bootstrap_demo")
    assert User.objects.filter(username="admin", is_superuser=True).exists()


def test_suppressions_cannot_be_added_or_deleted_in_the_console(client, world):
    client.force_login(world["boss"])
    suppression = Suppression.objects.get()
    assert client.get("/admin/drip/suppression/add/").status_code == 403
    assert client.post(f"/admin/drip/suppression/{suppression.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Suppression.objects.filter(pk=suppression.pk, lifted_at__isnull=True).exists()


def test_a_cross_site_form_cannot_act_for_a_logged_in_operator(world):
    """The console's forms carry Django's CSRF token: a POST from another site, riding the
    operator's session cookie, is refused before any action runs."""
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(world["boss"])
    before = snapshot()
    forged = browser.post("/admin/drip/event/", {"action": "cancel_events", "_selected_action": [world["event"].pk]})
    assert forged.status_code == 403 and snapshot() == before


def test_the_login_never_redirects_off_site(client, db):
    User.objects.create_superuser("op", "op@example.com", "the-right-passphrase-42")
    response = client.post("/admin/login/?next=https://evil.example/phish",
                           {"username": "op", "password": "the-right-passphrase-42",
                            "next": "https://evil.example/phish"})
    assert response.status_code == 302 and "evil.example" not in response["Location"]
