"""Bearer tokens (the event API, the status API, /metrics): compared in constant time."""
from __future__ import annotations

import hmac

from django.http import HttpRequest


def token_matches(request: HttpRequest, expected: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    # Bytes, because compare_digest refuses non-ASCII str, and a header may carry any byte.
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))
