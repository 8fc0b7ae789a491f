"""A transport that records instead of calling a provider, for the in-process sender tests
(tests/test_fast_sender.py). The real provider clients over HTTP are tests/test_sender.py."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from drip.delivery.channels import Outcome, Transport, classify
from drip.delivery.rendering import Rendered
from drip.models import Message


@dataclass(frozen=True)
class Call:
    """One call of the transport: what the sender handed over."""

    message_id: int
    channel: str
    to: str
    subject: str
    text: str


@dataclass
class _Failure:
    exc: BaseException
    classified: bool


@dataclass
class RecordingTransport(Transport):
    """Records every call; `fail_next` makes the next calls raise. Like the real transports,
    a provider exception is raised as `classify(exc)` unless told to raise it as it is (a
    transport bug, or anything that is not a provider error)."""

    calls: list[Call] = field(default_factory=list)
    # Seconds each call takes: a slow provider.
    delay: float = 0.0
    # Messages the sender may hand over in one `send_many` (Postmark's batch: several).
    batch_max: int = 1
    # The message ids of each `send_many` call: one provider request each.
    requests: list[list[int]] = field(default_factory=list)
    _failures: list[_Failure] = field(default_factory=list)
    _failures_for: dict[int, _Failure] = field(default_factory=dict)

    def fail_next(self, exc: BaseException, times: int = 1, classified: bool = True) -> None:
        self._failures.extend(_Failure(exc, classified) for _ in range(times))

    def fail_for(self, message_id: int, exc: BaseException, classified: bool = True) -> None:
        """The call for this one message raises (once), wherever it comes in its batch."""
        self._failures_for[message_id] = _Failure(exc, classified)

    def send(self, message: Message, rendered: Rendered) -> str:
        self.calls.append(Call(message.pk, message.channel, message.to, rendered.subject, rendered.text))
        if self.delay:
            time.sleep(self.delay)
        failure = self._failures_for.pop(message.pk, None) or (self._failures.pop(0) if self._failures else None)
        if failure is not None:
            if failure.classified and isinstance(failure.exc, Exception):
                raise classify(failure.exc) from failure.exc
            raise failure.exc
        return f"rec-{len(self.calls)}"

    def send_many(self, items: Sequence[tuple[Message, Rendered]]) -> list[Outcome]:
        self.requests.append([message.pk for message, _ in items])
        return super().send_many(items)

    def ids(self) -> list[int]:
        return [c.message_id for c in self.calls]
