"""drip.rows: plain-row inserts and updates for the hot paths (one statement per batch on
PostgreSQL, a row at a time elsewhere), with the same results as the ORM would give."""
from __future__ import annotations

import pytest
from django.db import DataError, connection, transaction
from django.utils import timezone

from drip.models import Channel, Message
from drip.support.rows import insert_rows, update_rows
from tests.factories import make_contact


def messages(n: int) -> list[Message]:
    contact = make_contact()
    return [Message.objects.create(contact=contact, channel=Channel.SMS, template_type="welcome", to=contact.phone,
                                   status=Message.Status.SENDING, claim_token="mine") for _ in range(n)]


def test_update_rows_gives_each_row_its_own_values_where_the_condition_holds(db):
    first, second, third = messages(3)
    Message.objects.filter(pk=third.pk).update(claim_token="someone-else")
    now = timezone.now()
    rows = [{"id": m.pk, "body": f"body {m.pk}", "sms_segments": segments, "sending_at": now}
            for m, segments in ((first, 1), (second, None), (third, 2))]
    done = update_rows(Message, rows, "status = %s AND claim_token = %s", [Message.Status.SENDING, "mine"])
    assert done == {first.pk, second.pk}  # the third is no longer ours: untouched, not returned
    got = {m.pk: (m.body, m.sms_segments, m.sending_at) for m in Message.objects.all()}
    assert got == {first.pk: (f"body {first.pk}", 1, now), second.pk: (f"body {second.pk}", None, now),
                   third.pk: ("", None, None)}


def test_update_rows_refuses_rows_with_different_columns(db):
    first, second = messages(2)
    with pytest.raises(AssertionError):
        update_rows(Message, [{"id": first.pk, "body": "a"}, {"id": second.pk, "error": "b"}], "status = %s", ["sending"])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite does not enforce varchar lengths")
def test_a_value_too_long_for_its_column_is_refused_not_cut(db):
    [message] = messages(1)
    with pytest.raises(DataError), transaction.atomic():
        update_rows(Message, [{"id": message.pk, "to": "x" * 300}], "status = %s", ["sending"])
    contact = make_contact()
    with pytest.raises(DataError), transaction.atomic():
        insert_rows(Message, [{"contact_id": contact.pk, "channel": "sms", "template_type": "w", "to": "y" * 300}],
                    timezone.now())
    assert Message.objects.get(pk=message.pk).to == message.to
