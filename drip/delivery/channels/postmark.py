"""Postmark's `/email/batch`: anymail's own payloads, in one request, and each message's
answer read by errors.classify_postmark_result; and Postmark's outbound search, the lookup
of an email whose outcome is unknown."""
from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urljoin

import requests
from anymail.backends.postmark import EmailBackend as PostmarkBackend
from anymail.backends.postmark import PostmarkPayload
from anymail.exceptions import AnymailRequestsAPIError
from anymail.utils import get_anymail_setting
from django.conf import settings

from drip.delivery.channels.base import METADATA_KEY, Lookup, forget_client, lookup_failed
from drip.delivery.channels.errors import Outcome, classify, classify_postmark_result
from drip.delivery.rendering import Rendered
from drip.models import Message

BACKEND = "anymail.backends.postmark.EmailBackend"
API_URL = "https://api.postmarkapp.com/"


def batches(connection: Any) -> bool:
    # Postmark's bulk API (POSTMARK_USE_BULK_API) is another endpoint, and a batch of one is
    # no batch: one message per request then.
    return isinstance(connection, PostmarkBackend) and not connection.use_bulk_api and settings.DRIP_EMAIL_BATCH_MAX > 1


class _PostmarkBatch:
    """The request anymail's `post_to_esp` makes for `/email/batch`: the first message's
    request (its headers carry the server token) with, as body, the JSON list of every
    message's `/email` body. So the session, timeout and error wrapping are anymail's."""

    def __init__(self, payloads: list[PostmarkPayload]) -> None:
        self.payloads = payloads

    def get_request_params(self, api_url: str) -> dict[str, Any]:
        params = self.payloads[0].get_request_params(api_url)
        params["url"] = urljoin(api_url, "email/batch")
        params["data"] = "[" + ",".join(p.serialize_data() for p in self.payloads) + "]"
        return params


def post_batch(connection: PostmarkBackend, payloads: list[PostmarkPayload]) -> list[Outcome]:
    """One outcome per payload: from its own answer, or the whole request's error (no answer,
    5xx, 429, a timeout...) for each, so each retries on its own backoff."""
    if not payloads:
        return []
    try:
        response = connection.post_to_esp(_PostmarkBatch(payloads), None)
        results = _postmark_batch_results(connection, response, len(payloads))
    except Exception as exc:  # classified below, never swallowed
        forget_client("email")
        error = classify(exc)
        return [error] * len(payloads)
    return [classify_postmark_result(result) for result in results]


def _postmark_batch_results(connection: PostmarkBackend, response: requests.Response, count: int) -> list[dict[str, Any]]:
    """The answer's list, one result per message in order. Anything else (a 422 for the
    whole request, an unreadable 200) raises, and `classify` reads it as permanent: a 200
    may mean some were sent, so none is sent again."""
    if response.status_code != 200:
        raise AnymailRequestsAPIError(response=response, backend=connection)
    results = connection.deserialize_json_response(response, None, None)
    if not isinstance(results, list) or len(results) != count or not all(isinstance(r, dict) for r in results):
        raise AnymailRequestsAPIError(f"batch answer is not {count} results", response=response, backend=connection)
    return results


def lookup(message: Message) -> Lookup:
    """Postmark's outbound search, filtered on the Message id in the metadata."""
    try:
        answer = requests.get(
            f"{_postmark_api_url()}messages/outbound",
            params={"count": "1", "offset": "0", f"metadata_{METADATA_KEY}": str(message.pk)},
            headers={"Accept": "application/json", "X-Postmark-Server-Token": _postmark_token()},
            timeout=settings.DRIP_PROVIDER_TIMEOUT,
        )
        answer.raise_for_status()
        return parse_postmark_search(answer.json(), message.pk)
    except (requests.RequestException, ValueError) as exc:
        return lookup_failed(exc, "postmark")


def _postmark_api_url() -> str:
    url = str(get_anymail_setting("api_url", esp_name="postmark", default=API_URL))
    return url if url.endswith("/") else url + "/"


def _postmark_token() -> str:
    return str(get_anymail_setting("server_token", esp_name="postmark"))


def parse_postmark_search(answer: Any, message_id: int) -> Lookup:
    """`GET /messages/outbound` → {"TotalCount": n, "Messages": [{"MessageID", "Metadata"}...]}."""
    if not isinstance(answer, dict) or not isinstance(answer.get("Messages"), list):
        return Lookup.cannot_tell(f"postmark search answered {str(answer)[:200]!r}")
    for found in answer["Messages"]:
        metadata = found.get("Metadata") or {}
        # The filter did this already; a proxy or a future API that ignored it must not make
        # another message count as this one.
        if str(metadata.get(METADATA_KEY, message_id)) == str(message_id) and found.get("MessageID"):
            return Lookup.accepted(str(found["MessageID"]))
    return Lookup.not_found()


def like(model: PostmarkPayload, message: Message, rendered: Rendered, headers: dict[str, str]) -> PostmarkPayload:
    """`model` (anymail's payload of another message of the batch, same backend and send
    defaults) with this message's own fields: what anymail would build for it."""
    payload = copy.copy(model)
    data = dict(model.data)
    data.update({"To": message.to, "Subject": rendered.subject, "TextBody": rendered.text})
    if rendered.html:
        data["HtmlBody"] = rendered.html
    else:
        data.pop("HtmlBody", None)
    data["Metadata"] = {**model.data.get("Metadata", {}), METADATA_KEY: str(message.pk)}
    own = headers
    data["Headers"] = [{"Name": h["Name"], "Value": own.get(h["Name"], h["Value"])} for h in model.data.get("Headers", [])]
    payload.data = data
    return payload
