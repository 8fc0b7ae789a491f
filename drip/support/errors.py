"""The one error that names a field: bad input from a producer, an operator or a command.
`field` is the culprit's JSON path as the client sent it ("data.scheduledAt",
"[2].data.contactEmail"), or None for the body as a whole."""
from __future__ import annotations


class FieldError(ValueError):
    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field

    def under(self, prefix: str) -> FieldError:
        """The same error, its field placed under `prefix` ("data.", "[2].data.")."""
        return FieldError(str(self), f"{prefix}{self.field}" if self.field else (prefix.rstrip(".") or None))

    def as_dict(self) -> dict[str, str | None]:
        return {"error": str(self), "field": self.field}


def shown(value: str, limit: int = 60) -> str:
    """A value quoted for an error message, cut short: the body may be a megabyte of it."""
    return repr(value if len(value) <= limit else value[:limit] + "…")
