"""The console in a real browser: headless Debian chromium driven by Playwright against the
live server and a real worker. Saves a screenshot of each page in a temporary directory, or
under docs/ (docs/console.md shows them) when DRIP_SCREENSHOTS=docs, so an ordinary run leaves
the checkout clean. Skips only when chromium is absent outside CI; in CI (CI=true) it fails."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from drip.models import Event, Registration
from tests.factories import make_contact, make_event

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs chromium)")
    pytest.skip(f"{reason} (apt-get install -y chromium chromium-driver)")


@pytest.fixture
def page(monkeypatch) -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        _missing("chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are
    # plain synchronous ones all the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                                    headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        yield tab
        context.close()
        browser.close()


def screenshots_dir() -> Path:
    """docs/ only when asked (DRIP_SCREENSHOTS=docs, or another directory's path)."""
    wanted = os.environ.get("DRIP_SCREENSHOTS", "")
    if wanted == "docs":
        return DOCS
    return Path(wanted) if wanted else Path(tempfile.gettempdir()) / "drip-screenshots"


def shot(page, name: str) -> None:
    folder = screenshots_dir()
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"console-{name}.png"), full_page=True)


def visible_at_1400(page, *columns: str) -> None:
    """Inside the list's visible area (it scrolls sideways when too wide), left of the filters."""
    area = page.locator("#changelist .results").bounding_box()
    assert area is not None
    for column in columns:
        box = page.locator(f"th.column-{column}").bounding_box()
        assert box is not None and box["x"] + box["width"] <= area["x"] + area["width"] + 1, (column, box, area)


def run_action(page, action: str, pk: int) -> None:
    page.check(f'input[name="_selected_action"][value="{pk}"]')
    page.select_option('select[name="action"]', action)
    page.click('button[name="index"]')


def test_an_operator_walks_through_the_console(worker, live_server, page, settings):
    get_user_model().objects.create_superuser("operator", "operator@example.com", "a-long-password")
    contact = make_contact(sms_consent=False, first_name="Ada", last_name="Lovelace", email="ada@example.com",
                           timezone="Europe/London")
    event = make_event(starts_in=3 * 86400, title="Intro to Drip")
    other = make_event(starts_in=5 * 86400, title="Drip, part two")
    base = live_server.url

    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "a-long-password")
    page.click('input[type="submit"]')
    page.wait_for_selector("text=Needs attention")
    assert "Drip" in page.inner_text("#site-name")

    # Enroll with the admin action.
    page.goto(f"{base}/admin/drip/contact/")
    run_action(page, "enroll_in_event", contact.pk)
    page.select_option('select[name="event"]', str(event.pk))
    page.click('input[name="apply"]')
    page.wait_for_selector("text=Enrolled 1 contact(s) in Intro to Drip")

    # Its registration's timeline shows the welcome as sent (the real worker sent it).
    registration = Registration.objects.get(contact=contact, event=event)
    page.goto(f"{base}/admin/drip/registration/{registration.pk}/change/")
    for _ in range(40):
        if "email welcome sent" in page.inner_text(".drip-timeline"):
            break
        page.wait_for_timeout(500)
        page.reload()
    timeline = page.inner_text(".drip-timeline")
    assert "email welcome sent" in timeline and "UTC" in timeline and "GMT" in timeline
    shot(page, "timeline")

    # The event's page: its funnel chart, numbers and next due step.
    page.goto(f"{base}/admin/drip/event/{event.pk}/change/")
    chart = page.locator("svg.drip-funnel-chart")
    chart.wait_for()
    assert chart.is_visible()
    assert "Next due:" in page.inner_text(".drip-funnel")
    shot(page, "funnel")

    # Template preview: an SMS with its encoding and segments, an email rendered.
    page.goto(f"{base}/admin/drip/message/preview/?template=reminder_24h:sms&registration={registration.pk}")
    assert "GSM-7" in page.inner_text("#content") and "segment" in page.inner_text("#content")
    shot(page, "preview-sms")
    page.goto(f"{base}/admin/drip/message/preview/?template=welcome:email&registration={registration.pk}")
    page.wait_for_selector("iframe.drip-email")
    assert "Intro to Drip" in page.frame_locator("iframe.drip-email").locator("body").inner_text()
    shot(page, "preview")

    # Moving a registration is an action with its own form (cancel + enroll through the services).
    page.goto(f"{base}/admin/drip/registration/")
    run_action(page, "move_to_event", registration.pk)
    page.wait_for_selector("text=Move registrations to another event")
    page.select_option('select[name="event"]', str(other.pk))
    shot(page, "move")
    page.click('input[name="apply"]')
    page.wait_for_selector("text=Moved 1 registration(s)")
    visible_at_1400(page, "status", "created")
    shot(page, "registrations")

    # The audit lists: filtered by event, status and outcome visible at 1400 px without scrolling.
    page.goto(f"{base}/admin/drip/step/?registration__event__id__exact={event.pk}")
    assert "registration cancelled" in page.inner_text("#result_list")
    visible_at_1400(page, "status", "outcome")
    shot(page, "steps")
    page.goto(f"{base}/admin/drip/message/?registration__event__id__exact={event.pk}")
    visible_at_1400(page, "status", "reason")
    shot(page, "messages")

    # Completing a future event asks first; without the tick it is refused, politely.
    page.goto(f"{base}/admin/drip/event/")
    run_action(page, "complete_event", event.pk)
    page.wait_for_selector("text=Yes, it ended before its scheduled start")
    shot(page, "complete-confirm")
    page.click('input[name="apply"]')
    page.wait_for_selector(".messagelist .error")
    assert "completedAt" in page.inner_text(".messagelist")
    event.refresh_from_db()
    assert event.status == Event.Status.SCHEDULED

    # CSV import: a preview lists every row's error before anything is written.
    page.goto(f"{base}/admin/drip/contact/")
    page.click("text=Import CSV into an event")
    page.select_option('select[name="event"]', str(other.pk))
    rows = ("email,phone,first_name,timezone,email_consent,sms_consent\n"
            "grace@example.com,+14155550188,Grace,America/New_York,yes,yes\n"
            "not-an-email,,Bad,UTC,yes,no\n"
            "alan@example.com,+1 555,Alan,Europe/London,maybe,\n")
    page.set_input_files('input[name="file"]', files=[{"name": "people.csv", "mimeType": "text/csv", "buffer": rows.encode()}])
    page.click('input[name="check"]')
    page.wait_for_selector("text=2 row(s) have errors")
    assert "phone:" in page.inner_text(".drip-import")  # every error of a row, not only its first
    shot(page, "import")

    # A file over DRIP_IMPORT_INLINE_ROWS imports in a task; its page shows the progress.
    settings.DRIP_IMPORT_INLINE_ROWS = 2
    rows = "email,first_name,timezone,email_consent\n" + "".join(f"guest{i}@example.com,Guest{i},UTC,yes\n" for i in range(5))
    page.set_input_files('input[name="file"]', files=[{"name": "guests.csv", "mimeType": "text/csv", "buffer": rows.encode()}])
    page.click('input[name="check"]')
    page.click('input[name="confirm"]')
    page.wait_for_selector("text=Imported 5 row(s)", timeout=30_000)  # the page reloads itself until done
    assert "5 / 5" in page.inner_text(".drip-job")
    shot(page, "import-progress")

    page.goto(f"{base}/admin/")
    shot(page, "index")
