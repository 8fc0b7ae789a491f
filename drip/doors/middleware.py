"""Django's CommonMiddleware, minus the slash redirect for anything but GET and HEAD."""
from __future__ import annotations

from django.http import HttpRequest
from django.middleware.common import CommonMiddleware


class SafeCommonMiddleware(CommonMiddleware):
    """APPEND_SLASH answers a slash-less POST with a RuntimeError page under DEBUG, and with
    a 301 otherwise, which clients follow as a GET and lose the body (a one-click
    unsubscribe, a webhook). A POST to a URL that only exists with its slash is a 404 instead;
    the URLs that take POSTs are also routed without it (drip/urls.py)."""

    def should_redirect_with_slash(self, request: HttpRequest) -> bool:
        return request.method in ("GET", "HEAD") and super().should_redirect_with_slash(request)
