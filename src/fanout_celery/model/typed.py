"""Typed events: a pydantic model for an event name's data.

``UserEmail = EventType("app/weekly-email-activity.send", data=UserData)`` declares it;
``fanout.send(UserEmail(user=...))`` (or any event of that name, from ``send`` or
``step.send_event``) is validated against the model before anything is published, and a
handler triggered by it reads ``ctx.data`` as a ``UserData`` instance.
"""

from __future__ import annotations

import contextlib
import typing
import weakref
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ConfigurationError, InvalidEventError
from .events import Event
from .patterns import check_pattern

M = TypeVar("M", bound=BaseModel)


def describe(exc: ValidationError) -> str:
    """'user.email: value is not a valid email; ...' — the fields to fix."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'data'}: {err['msg']}"
                     for err in exc.errors())


class EventType(Generic[M]):
    """An event name whose ``data`` must validate against ``data`` (a pydantic model)."""

    def __init__(self, name: str, data: type[M]) -> None:
        self.name = check_pattern(name)  # first: it rejects a name that is not a string
        if "*" in self.name:
            raise ConfigurationError(f"an EventType names one event, not a wildcard: {name!r}")
        if not (isinstance(data, type) and issubclass(data, BaseModel)):
            raise ConfigurationError(f"EventType data must be a pydantic model class, not "
                                     f"{data!r}")
        self.model = data

    def __repr__(self) -> str:
        return f"EventType({self.name!r}, data={self.model.__name__})"

    def __call__(self, data: M | dict[str, Any] | None = None, /, *, id: str | None = None,
                 ts: int | None = None, **fields: Any) -> Event:
        """An ``Event`` of this type: ``UserEmail(user=...)``, or ``UserEmail(model)``, or
        ``UserEmail({...})``; data is validated now. ``id``/``ts`` are the event's own."""
        if data is None:
            data = fields
        elif fields:
            raise ConfigurationError("give the data as one model/dict or as keywords, not both")
        model = data if isinstance(data, self.model) else self.parse(data)
        return Event(name=self.name, data=model.model_dump(mode="json"), id=id, ts=ts)

    def parse(self, data: Any) -> M:
        """The model for ``data``; ``InvalidEventError`` listing the invalid fields."""
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise InvalidEventError(
                f"event {self.name!r} data does not match {self.model.__name__}: "
                f"{describe(exc)}") from None


# Resolved string return annotations (``from __future__ import annotations``), by step
# function: typing.get_type_hints compiles every annotation, ~0.25 ms a call, which every
# executed and every replayed step would otherwise pay.
_RETURN_HINTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _return_hint(fn: Any) -> Any:
    hint = getattr(fn, "__annotations__", {}).get("return")
    if not isinstance(hint, str):
        return hint
    target = getattr(fn, "__func__", fn)
    try:
        return _RETURN_HINTS[target]
    except (KeyError, TypeError):  # not seen yet, or not weakly referenceable
        pass
    try:
        resolved = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve: no model
        return None
    with contextlib.suppress(TypeError):
        _RETURN_HINTS[target] = resolved
    return resolved


def output_model(fn: Any, explicit: Any) -> type[BaseModel] | None:
    """The pydantic model a step's output is returned as: ``output_type=``, or the step
    function's return annotation when that is a model."""
    if explicit is not None:
        if not (isinstance(explicit, type) and issubclass(explicit, BaseModel)):
            raise ConfigurationError(f"output_type must be a pydantic model class, not "
                                     f"{explicit!r}")
        return explicit
    hint = _return_hint(fn)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None
