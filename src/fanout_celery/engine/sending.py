"""Sending events: validate every event (and its type), let middleware transform them,
then dispatch. A batch with one bad event sends none."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from ..errors import InvalidEventError
from ..model.definition import Subscription
from ..model.events import FUNCTION_INVOKED, chunks, is_stream, new_id, prepare, prepare_batch
from ..model.middleware import Chain
from ..model.records import run_id_for
from ..model.settings import Settings
from ..model.typed import EventType


class Dispatch(Protocol):
    """Creates the runs of validated events (``Dispatcher.dispatch``)."""

    def __call__(self, records: Sequence[dict[str, Any]], parent: tuple[str, str] | None = None,
                 only: Subscription | None = None, notify_parent: bool = False) -> int: ...


class Sender:
    """The one path by which events enter: ``fanout.send``, ``step.send_event``,
    ``invoke`` and cron slots."""

    def __init__(self, dispatch: Dispatch, settings: Settings, middleware: Chain,
                 event_types: Mapping[str, EventType[Any]]) -> None:
        self.dispatch = dispatch
        self.settings = settings
        self.middleware = middleware
        self.event_types = event_types

    def send(self, events: Any, *, parent: tuple[str, str] | None = None, ctx: Any = None,
             id_for: Callable[[int], str] | None = None) -> list[str]:
        """Validate and dispatch ``events``; returns their ids. ``id_for(i)`` gives an id
        to events without one (derived from the sending step, so a replay repeats it).
        A stream (``is_stream``) is validated and dispatched chunk by chunk."""
        if is_stream(events):
            ids: list[str] = []
            for _, chunk in self.stream(events, ctx=ctx, id_for=id_for):
                self.dispatch(chunk, parent=parent)
                ids.extend(r["id"] for r in chunk)
            return ids
        records = self.prepare(events, ctx=ctx, id_for=id_for)
        self.dispatch(records, parent=parent)
        return [r["id"] for r in records]

    def stream(self, events: Any, *, ctx: Any = None,
               id_for: Callable[[int], str] | None = None,
               start: int = 0) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """The stream ``events`` as prepared chunks, ``(events read so far, records)``,
        from its event ``start`` on. Each chunk is validated when it is read: a bad event
        stops the stream there, after the chunks before it were sent."""
        for first, chunk in chunks(events, start):
            offset = (lambda i, first=first: id_for(first + i)) if id_for else None
            try:
                records = self.prepare(chunk, ctx=ctx, id_for=offset)
            except InvalidEventError as exc:
                raise InvalidEventError(
                    f"in the chunk of the stream from event #{first}: "
                    f"{str(exc).removesuffix('; nothing was sent')}; the {first} events "
                    "before it were sent") from None
            yield first + len(chunk), records

    def prepare(self, events: Any, *, ctx: Any = None,
                id_for: Callable[[int], str] | None = None) -> list[dict[str, Any]]:
        """Every event validated (and its type), as middleware leaves it: what ``send``
        dispatches. Nothing is written."""
        records = prepare_batch(events, max_bytes=self.settings.max_event_bytes, id_for=id_for)
        if self.event_types:
            self._check_types(records)
        if self.middleware:
            records = self._transform(ctx, records)
        return records

    def _check_types(self, records: list[dict[str, Any]]) -> None:
        for index, record in enumerate(records):
            event_type = self.event_types.get(record["name"])
            if event_type is not None:
                try:
                    event_type.parse(record["data"])
                except InvalidEventError as exc:
                    raise InvalidEventError(f"event #{index} of the batch: {exc}; nothing "
                                            "was sent") from None

    def _transform(self, ctx: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = self.middleware.before_send_events(ctx, records)
        # Middleware output is validated again: it must still be a valid event.
        return prepare_batch(out, max_bytes=self.settings.max_event_bytes * 2,
                             allow_system=True)

    def start(self, sub: Subscription, event: dict[str, Any], *,
              parent: tuple[str, str] | None = None, ctx: Any = None,
              notify_parent: bool = False) -> str:
        """Start (once) the run of ``sub`` for a system event (``invoke``, an invoke
        step's child); returns the run id."""
        record = prepare(event, max_bytes=self.settings.max_event_bytes, allow_system=True)
        if self.middleware:
            record = self._transform(ctx, [record])[0]
        self.dispatch([record], parent=parent, only=sub,
                                 notify_parent=notify_parent)
        return run_id_for(sub.function_id, record["id"])

    def invoke(self, sub: Subscription, data: dict[str, Any] | None) -> str:
        """Start a run of ``sub`` now, with ``data``; returns its run id."""
        if data is not None and not isinstance(data, dict):
            raise InvalidEventError(f"invoke data must be a dict, not {type(data).__name__}")
        return self.start(sub, {"name": FUNCTION_INVOKED, "data": data or {}, "id": new_id()})
