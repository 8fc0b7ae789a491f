"""Entry points of the parsing stage: JSON in, typed events out, without touching the database.

A bad field raises drip.support.errors.FieldError naming it by its JSON path, e.g. "data.scheduledAt"
for one event, "[2].data.scheduledAt" for the third of a list.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

from annotated_types import MaxLen
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, create_model

from drip.doors.intake.errors import field_error, json_type
from drip.doors.intake.schema import EVENTS, Envelope, EventData
from drip.support.errors import FieldError

MAX_EVENTS = 1000  # per request: one transaction must stay short
Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class ParsedEvent:
    name: str
    # Where this event's data sits in the request ("data." or "[2].data."), so errors found
    # while applying it name the field the same way parse errors do.
    at: str
    data: EventData

    def path(self, name: str) -> str:
        return f"{self.at}{name}"


def parse_json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    # ValueError covers bad JSON, bad UTF-8 and integers too long to convert; a deeply
    # nested body exhausts the parser's recursion.
    except (ValueError, RecursionError) as exc:
        raise FieldError(f"malformed JSON: {exc}", None) from None


def parse_events(payload: Any) -> list[ParsedEvent]:
    """One event or a list of at most MAX_EVENTS, all valid, or a FieldError for the first bad one."""
    if isinstance(payload, dict):
        return [parse_event(payload, "")]
    if isinstance(payload, list):
        if len(payload) > MAX_EVENTS:
            raise FieldError(f"at most {MAX_EVENTS} events per request, got {len(payload)}", None)
        return _parse_list(payload)
    shape = 'an event {"name": ..., "data": {...}} or a list of them'
    raise FieldError(f"the body must be {shape}, not {json_type(payload)}", None)


# A list is validated by one call per event name (a list adapter) rather than two per item.
_ENVELOPES = TypeAdapter(list[Envelope])
_DATA: dict[str, TypeAdapter[list[Any]]] = {name: TypeAdapter(list[model]) for name, model in EVENTS.items()}  # type: ignore[valid-type]


def _parse_list(payload: list[Any]) -> list[ParsedEvent]:
    try:
        envelopes = _ENVELOPES.validate_python(payload)
        places: dict[str, list[int]] = defaultdict(list)
        for i, envelope in enumerate(envelopes):
            places[envelope.name].append(i)
        data: list[Any] = [None] * len(envelopes)
        for name, indexes in places.items():
            for i, parsed in zip(indexes, _DATA[name].validate_python([envelopes[i].data for i in indexes]), strict=True):
                data[i] = parsed
    except ValidationError:
        # A bad list is rare: item by item finds the first error in request order and words
        # it as it always was (a list adapter would report them grouped by event name).
        return [parse_event(item, f"[{i}].") for i, item in enumerate(payload)]
    return [ParsedEvent(e.name, f"[{i}].data.", d) for i, (e, d) in enumerate(zip(envelopes, data, strict=True))]


def parse_event(item: Any, at: str) -> ParsedEvent:
    """`at` is the event's place in the request: "" for a lone event, "[2]." in a list."""
    envelope = _validate(Envelope, item, at)
    data_at = f"{at}data."
    return ParsedEvent(envelope.name, data_at, _validate(EVENTS[envelope.name], envelope.data, data_at))


def _validate(model: type[Model], value: Any, at: str) -> Model:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise field_error(exc, at) from None


def _tagged(name: str, model: type[EventData]) -> type[BaseModel]:
    """The schema-only model of one whole event: its name as a constant, its data's model."""
    tag: Any = Literal[name]  # a Literal built at run time: the name comes from the registry
    return create_model(f"{model.__name__}Event", name=(tag, ...), data=(model, ...))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every body accepted: one event, or a list of at most MAX_EVENTS."""
    tagged = tuple(_tagged(name, model) for name, model in EVENTS.items())
    event: Any = Annotated[Union[tagged], Field(discriminator="name")]  # noqa: UP007 (a tuple of types)
    body: Any = Union[event, Annotated[list[event], MaxLen(MAX_EVENTS)]]  # noqa: UP007
    return TypeAdapter(body).json_schema(by_alias=True)
