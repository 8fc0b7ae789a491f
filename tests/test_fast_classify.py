"""drip.channels.classify, branch by branch, with the exceptions the provider libraries
really raise (built with their own constructors; no mocks)."""
from __future__ import annotations

import pytest
import requests
from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused, AnymailRequestsAPIError
from anymail.message import AnymailMessage, AnymailRecipientStatus
from twilio.base.exceptions import TwilioException, TwilioRestException

from drip.delivery.channels import TransportError, classify, classify_postmark_result

TWILIO_URI = "/2010-04-01/Accounts/ACtest/Messages.json"


def refused(*statuses: str) -> AnymailRecipientsRefused:
    """What anymail raises when every recipient was refused, with the per-recipient status it
    set on the message before raising."""
    message = AnymailMessage(subject="s", body="b", to=[f"r{n}@example.com" for n in range(len(statuses))])
    message.anymail_status.set_recipient_status(
        {f"r{n}@example.com": AnymailRecipientStatus(message_id=None, status=status) for n, status in enumerate(statuses)}
    )
    return AnymailRecipientsRefused(email_message=message)


def esp_response(status: int, reason: str = "", body: bytes = b'{"ErrorCode": 0, "Message": "no"}') -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    response._content = body  # requests has no public constructor for a received body
    response.url = "https://api.postmarkapp.com/email"
    return response


def twilio_error(status: int, code: int | None, msg: str = "provider said no") -> TwilioRestException:
    return TwilioRestException(status, TWILIO_URI, msg=msg, code=code, method="POST")


def test_it_passes_a_transport_error_through_unchanged():
    exc = TransportError("already decided", permanent=True, revoke_consent=True)
    assert classify(exc) is exc


def test_a_refused_recipient_is_permanent_without_touching_consent():
    result = classify(refused("invalid"))
    assert (result.permanent, result.revoke_consent) == (True, False)
    assert result.message.startswith("recipient refused: All message recipients were rejected or invalid")


def test_a_refused_recipient_without_a_status_on_the_message_is_permanent_too():
    result = classify(AnymailRecipientsRefused("no recipients"))
    assert (result.permanent, result.revoke_consent) == (True, False)


def test_a_recipient_the_esp_rejected_revokes_consent():
    # "rejected" is the ESP's own suppression list (hard bounce, complaint): ours too.
    result = classify(refused("rejected", "invalid"))
    assert (result.permanent, result.revoke_consent) == (True, True)


@pytest.mark.parametrize("code", [21211, 21614, 21408, 21612])
def test_the_permanent_twilio_codes_fail_at_once_and_keep_consent(code):
    result = classify(twilio_error(400, code))
    assert (result.permanent, result.revoke_consent) == (True, False)
    assert result.message == f"twilio 400 error {code}: provider said no"


def test_twilio_opted_out_is_permanent_and_revokes_consent():
    result = classify(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"))
    assert (result.permanent, result.revoke_consent) == (True, True)


@pytest.mark.parametrize("status,code", [(429, 20429), (500, 20500), (503, None)])
def test_twilio_rate_limits_and_server_errors_are_transient(status, code):
    result = classify(twilio_error(status, code))
    assert (result.permanent, result.revoke_consent) == (False, False)
    assert result.message.startswith(f"twilio {status} error {code}:")


@pytest.mark.parametrize("status,code", [(400, 21604), (401, 20003), (404, 20404)])
def test_other_twilio_client_errors_are_permanent(status, code):
    result = classify(twilio_error(status, code))
    assert (result.permanent, result.revoke_consent) == (True, False)


@pytest.mark.parametrize("status,reason", [(429, "Too Many Requests"), (500, "Internal Server Error"), (503, "Service Unavailable")])
def test_an_esp_rate_limit_or_server_error_is_transient(status, reason):
    result = classify(AnymailRequestsAPIError("Postmark API response", response=esp_response(status, reason)))
    assert (result.permanent, result.revoke_consent) == (False, False)
    assert result.message.startswith(f"email provider {status}: ")


def test_an_esp_client_error_is_permanent():
    exc = AnymailRequestsAPIError("Postmark API response", response=esp_response(400, "Bad Request"))
    assert exc.status_code == 400  # anymail reads it from the response
    result = classify(exc)
    assert (result.permanent, result.revoke_consent) == (True, False)
    assert result.message.startswith("email provider 400: ")


def test_an_esp_call_that_got_no_answer_is_transient():
    # anymail's requests backends raise this, with no response, when the POST itself failed.
    no_answer = AnymailRequestsAPIError("Error posting to https://api.postmarkapp.com/email:")
    result = classify(no_answer)
    assert (result.permanent, result.message) == (False, "email provider unreachable: Error posting to https://api.postmarkapp.com/email:")


def test_an_esp_api_error_without_a_status_is_transient():
    # Raised by the non-requests backends (Amazon SES, the test backend).
    result = classify(AnymailAPIError("Unparsable test response"))
    assert (result.permanent, result.revoke_consent) == (False, False)
    assert result.message == "email provider unreachable: Unparsable test response"


@pytest.mark.parametrize("exc", [
    requests.ConnectionError("connection refused"),
    requests.Timeout("read timed out"),
    ConnectionRefusedError("refused"),
    ConnectionResetError("reset by peer"),
    TimeoutError("timed out"),
], ids=lambda e: type(e).__name__)
def test_an_unreachable_provider_is_transient(exc):
    result = classify(exc)
    assert (result.permanent, result.revoke_consent) == (False, False)
    assert result.message == f"provider unreachable: {exc}"


def test_another_twilio_exception_is_transient():
    result = classify(TwilioException("Unable to create record"))
    assert (result.permanent, result.message) == (False, "twilio: Unable to create record")


def test_an_unknown_exception_is_transient_and_named():
    # The retry limit, not a guess, ends it.
    result = classify(KeyError("sid"))
    assert (result.permanent, result.revoke_consent) == (False, False)
    assert result.message == "KeyError: 'sid'"


INACTIVE = ("You tried to send to a recipient that has been marked as inactive.\n Found inactive addresses: a@example.com.\n "
            "Inactive recipients are ones that have generated a hard bounce or a spam complaint. ")


@pytest.mark.parametrize("result,permanent,revoke", [
    ({"ErrorCode": 406, "Message": INACTIVE}, True, True),
    # Accepted "but will not deliver to these inactive addresses": our only recipient.
    ({"ErrorCode": 0, "MessageID": "m-1", "Message": "Message OK, but will not deliver to these inactive addresses: a@example.com. Inactive recipients are ones that have generated a hard bounce or a spam complaint."}, True, True),
    ({"ErrorCode": 300, "Message": "Invalid 'To' address: 'a@'."}, True, False),
    ({"ErrorCode": 300, "Message": "Invalid 'From' address: 'x'."}, True, False),
    ({"ErrorCode": 100, "Message": "Maintenance"}, False, False),
])
def test_a_postmark_batch_result_with_an_error_code_is_read_as_the_single_send_would_be(result, permanent, revoke):
    outcome = classify_postmark_result(result)
    assert isinstance(outcome, TransportError)
    assert (outcome.permanent, outcome.revoke_consent) == (permanent, revoke)
    assert f"postmark error {result['ErrorCode']}" in outcome.message


def test_an_accepted_postmark_batch_result_is_its_message_id():
    assert classify_postmark_result({"ErrorCode": 0, "MessageID": "b7bc2f4a", "Message": "OK", "To": "a@example.com"}) == "b7bc2f4a"
