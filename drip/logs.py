"""Loggers whose every line carries the registration, step and message ids, so an operator
can follow one registration with a single grep (`grep registration=42`)."""
from __future__ import annotations

import logging
from typing import Any


class IdsAdapter(logging.LoggerAdapter):
    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        ids = " ".join(f"{k}={v}" for k, v in (self.extra or {}).items() if v is not None)
        return f"{msg} [{ids}]", kwargs


def step_log(step: Any, name: str = "drip.steps") -> IdsAdapter:
    return IdsAdapter(logging.getLogger(name), {"registration": step.registration_id, "step": step.id})


def message_log(message: Any, name: str = "drip.messages") -> IdsAdapter:
    return IdsAdapter(
        logging.getLogger(name),
        {"registration": message.registration_id, "step": message.step_id, "message": message.id},
    )
