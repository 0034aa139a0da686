"""Events: the model, validation, and ids.

An event id is the unit of de-duplication: the same id sent twice starts nothing new.
Ids of events sent from a step are derived from the run and step, so a replayed
``send_event`` produces the same ids and cannot start a second run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InvalidEventError
from .patterns import SYSTEM_PREFIX

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-./:@+]{0,254}\Z")
# Ids appear inside Redis keys: keep them to characters that cannot form a hash tag
# or a key separator trick.
ID_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,128}\Z")

FUNCTION_FAILED = "fanout/function.failed"
FUNCTION_FINISHED = "fanout/function.finished"
FUNCTION_INVOKED = "fanout/function.invoked"
FUNCTION_CANCELLED = "fanout/function.cancelled"
SCHEDULED_TIMER = "fanout/scheduled.timer"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    """A random event id that sorts roughly by creation time."""
    return f"{now_ms():012x}{os.urandom(10).hex()}"


def derived_id(*parts: str) -> str:
    """A deterministic id from its parts (used for run ids and step-sent events)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def dumps(value: Any) -> str:
    """Strict JSON: no NaN/Infinity, no objects JSON cannot represent."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Event(BaseModel):
    """An event: a name, a JSON object of data, and an id that de-duplicates it.

    ``id`` is generated when absent; ``ts`` is the time in milliseconds since the epoch.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    ts: int | None = None
    user: dict[str, Any] | None = None
    v: str | None = None
    # Set on events sent again by ``replay``: the id of the event replayed.
    replay_of: str | None = None
    # Trace context (W3C traceparent) of the run that sent it, set by tracing middleware.
    trace: dict[str, str] | None = None

    def __init__(self, /, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            raise InvalidEventError(
                f"invalid event {kwargs.get('name')!r}: {_describe(exc)}"
            ) from None

    @field_validator("data", mode="before")
    @classmethod
    def _model_data(cls, value: Any) -> Any:
        # Typed events: a pydantic model instance is stored as its JSON form.
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                "an event name is 1-255 characters of letters, digits and _-./:@+ "
                f"and cannot start with punctuation, got {value!r}"
            )
        return value

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not ID_RE.match(value):
            raise ValueError(
                f"an event id is 1-128 characters of letters, digits and _-. , got {value!r}"
            )
        return value

    @field_validator("ts")
    @classmethod
    def _check_ts(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("ts is milliseconds since the epoch and cannot be negative")
        return value


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in exc.errors()
    )


def coerce_event(value: Any) -> Event:
    """An ``Event`` from an ``Event`` or a mapping; anything else is ``InvalidEventError``."""
    if isinstance(value, Event):
        return value
    if isinstance(value, dict):
        try:
            return Event(**value)
        except TypeError as exc:
            raise InvalidEventError(f"invalid event: {exc}") from None
    raise InvalidEventError(f"expected an Event or a dict, got {type(value).__name__}")


def prepare(event: Any, *, max_bytes: int, event_id: str | None = None,
            allow_system: bool = False) -> dict[str, Any]:
    """Validate one event fully and return its stored form (a JSON-ready dict).

    Fills in ``id`` (``event_id`` if given and the event has none) and ``ts``.
    """
    ev = coerce_event(event)
    if ev.name.startswith(SYSTEM_PREFIX) and not allow_system:
        raise InvalidEventError(
            f"event names starting with {SYSTEM_PREFIX!r} are reserved for the library, "
            f"got {ev.name!r}"
        )
    record = {
        "name": ev.name,
        "data": ev.data,
        "id": ev.id or event_id or new_id(),
        "ts": ev.ts if ev.ts is not None else now_ms(),
    }
    if ev.user is not None:
        record["user"] = ev.user
    if ev.v is not None:
        record["v"] = ev.v
    if ev.replay_of is not None:
        record["replay_of"] = ev.replay_of
    if ev.trace is not None:
        record["trace"] = ev.trace
    try:
        encoded = dumps(record)
        # Lone surrogates survive dumps(ensure_ascii=False) but are not UTF-8.
        size = len(encoded.encode())
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidEventError(f"event {ev.name!r} data is not JSON: {exc}") from None
    if size > max_bytes:
        raise InvalidEventError(
            f"event {ev.name!r} is {size} bytes, over the limit of {max_bytes} "
            "(fanout_max_event_bytes); store large payloads elsewhere and send a reference"
        )
    # Normalise to what a consumer will read back (e.g. tuples become lists).
    parsed: dict[str, Any] = json.loads(encoded)
    return parsed


# Events of a stream (an iterator or generator given to send / send_event) are validated
# and sent this many at a time, so a sender holds one chunk, not the stream.
STREAM_CHUNK = 500


def is_stream(events: Any) -> bool:
    """Whether ``events`` is a stream: an iterator (a generator, ``map``, a database
    cursor, ``iter(queryset)``), sent chunk by chunk without holding it all. Collections
    that are not ordered sequences (a set) are not: a replayed ``send_event`` must see
    its events in the same order, their ids being derived from their index."""
    return isinstance(events, Iterator) and not isinstance(events, (str, bytes))


def chunks(events: Any, start: int = 0) -> Iterator[tuple[int, list[Any]]]:
    """``(index of its first event, chunk)`` for each ``STREAM_CHUNK`` events of the
    stream ``events``, skipping its first ``start`` events (already sent)."""
    iterator = iter(events)
    skipped = sum(1 for _ in islice(iterator, start))
    if skipped < start:
        return
    index = start
    while chunk := list(islice(iterator, STREAM_CHUNK)):
        yield index, chunk
        index += len(chunk)


class StreamedIds(Sequence[str]):
    """The ids of the events a ``step.send_event`` streamed, derived on demand from the
    run, the step and each event's index (no list of a million ids is held or stored).
    An event of a stream that carried its own id was sent with it; its entry here is
    the derived one."""

    __slots__ = ("key", "run_id", "size")

    def __init__(self, run_id: str, key: str, count: int) -> None:
        self.run_id, self.key, self.size = run_id, key, count

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(index)
        return derived_id(self.run_id, self.key, str(index))

    def __repr__(self) -> str:
        return f"<StreamedIds of {self.size} events sent by step {self.key!r}>"


def prepare_batch(events: Any, *, max_bytes: int, id_for: Any = None,
                  allow_system: bool = False) -> list[dict[str, Any]]:
    """Validate a batch before anything is written: one bad event rejects all of them.

    ``id_for(index)`` supplies a deterministic id for events that carry none.
    """
    if isinstance(events, (Event, dict)):
        events = [events]
    if not isinstance(events, (list, tuple)):
        raise InvalidEventError(
            f"expected an Event, a dict, a list of them or an iterator over them, got "
            f"{type(events).__name__}"
        )
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, ev in enumerate(events):
        try:
            record = prepare(ev, max_bytes=max_bytes,
                             event_id=id_for(index) if id_for else None,
                             allow_system=allow_system)
        except InvalidEventError as exc:
            raise InvalidEventError(f"event #{index} of the batch: {exc}; nothing was sent") \
                from None
        if record["id"] in seen:
            continue
        seen.add(record["id"])
        out.append(record)
    return out
