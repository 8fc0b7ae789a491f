"""The twilio client's HTTP: twilio's own requests-based client, minus requests' per-request
session machinery.

`TwilioHttpClient.request` builds every call through `Session.prepare_request` (merging the
session's headers, cookies, auth and hooks, encoding the form through requests' generic
key/value walk) and `Session.send` (environment settings, cookie jars, redirect checks): about
a third of an SMS's CPU in the worker, for a request that is the same shape every time (a form
POST with basic auth, no cookies, no redirects). Here the request is prepared directly and
handed to the session's own adapter, so the connection pool, TLS, proxies read once
(channels.base.read_environment_once), the timeout and every exception stay requests' own: the
errors `channels.classify` reads are unchanged. Anything else (a JSON body, redirects) goes
through twilio's client as before.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import requests
from requests.auth import _basic_auth_str
from requests.structures import CaseInsensitiveDict
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response

FORM = "application/x-www-form-urlencoded"


@lru_cache(maxsize=8)
def _authorization(username: str, password: str) -> str:
    return _basic_auth_str(username, password)


def form_pairs(data: Mapping[str, object] | None) -> list[tuple[str, object]]:
    """The form's fields as requests encodes them: a list is one field per item, None is
    left out (twilio has already dropped its `unset` values)."""
    pairs: list[tuple[str, object]] = []
    for key, value in (data or {}).items():
        items: Iterable[object] = value if isinstance(value, (list, tuple)) else (value,)
        pairs += [(key, item) for item in items if item is not None]
    return pairs


class LeanTwilioHttpClient(TwilioHttpClient):
    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        headers = dict(headers or {})
        if allow_redirects or self.session is None or headers.get("Content-Type", FORM) != FORM:
            return super().request(method, url, params, data, headers, auth, timeout, allow_redirects)
        if timeout is not None and timeout <= 0:
            raise ValueError(timeout)
        body = urlencode(form_pairs(data)) if method.upper() != "GET" else None
        prepared = self._prepared(method, url, params, body, headers, auth)
        logging_on = self.logger.isEnabledFor(logging.INFO)  # twilio's own request log, when asked for
        if logging_on:
            self.log_request({"method": prepared.method, "url": url, "params": params, "headers": headers})
        response = self.session.get_adapter(prepared.url).send(
            prepared, stream=False, timeout=self.timeout if timeout is None else timeout,
            verify=self.session.verify, cert=self.session.cert, proxies=self.session.proxies,
        )
        if logging_on:
            self.log_response(response.status_code, response)
        self._test_only_last_response = Response(int(response.status_code), response.text, response.headers)
        return self._test_only_last_response

    @staticmethod
    def _prepared(method: str, url: str, params: dict[str, object] | None, body: str | None,
                  headers: dict[str, str], auth: tuple[str, str] | None) -> requests.PreparedRequest:
        prepared = requests.PreparedRequest()
        prepared.method = method.upper()
        query = urlencode(form_pairs(params))
        prepared.url = f"{url}{'&' if '?' in url else '?'}{query}" if query else url
        all_headers: CaseInsensitiveDict[Any] = CaseInsensitiveDict(headers)
        if auth is not None:
            all_headers["Authorization"] = _authorization(*auth)
        if body is not None:
            prepared.body = body.encode()
            all_headers["Content-Type"] = FORM
            all_headers["Content-Length"] = str(len(prepared.body))
        prepared.headers = all_headers
        prepared.hooks = {"response": []}
        return prepared
