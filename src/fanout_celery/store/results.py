"""What the store port's verbs take and return: small immutable records (no I/O).

Imported through ``store.port``, which re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from ..model.records import Route


class WaiterRef(NamedTuple):
    """Where a step waiter is kept: its event name, its match bucket
    (``model.records.match_bucket``) and its field (``waiter_field(run, step)``)."""

    name: str
    bucket: str
    field: str


class CancelEntry(NamedTuple):
    """A ``cancel_on`` entry: run ``run_id`` is cancelled by an event ``name`` whose
    ``path`` (None: any) has the trigger's value (in ``bucket``), until ``expires`` (ms)."""

    name: str
    bucket: str
    path: str | None
    run_id: str
    entry: str
    expires: int


@dataclass(frozen=True)
class Waiters:
    """Who may wait for events of one name: step waiters (``waiter field`` -> JSON) and
    ``cancel_on`` entries (run id -> JSON) — only those whose match bucket the events fall
    in (each JSON holds its ``bucket``)."""

    name: str
    steps: dict[str, str] = field(default_factory=dict)
    cancels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Created:
    """What ``create_runs`` did: per run, whether this call created it; per distinct
    event name (first-seen order), who waits for it."""

    created: list[bool]
    waiters: list[Waiters]


@dataclass(frozen=True)
class Started:
    """``start`` took the lease: the run's record (static fields in line) and steps."""

    run: dict[str, str]
    steps: dict[str, str]


class TimerAnnouncements(Protocol):
    """What a pump waits on between rounds."""

    def wait(self, timeout: float) -> int | None:
        """The earliest wake time announced within ``timeout`` seconds (returns at the
        first announcement), or None."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class NotStarted:
    """``start`` did not take the lease. ``done``: the run is final; ``busy``: another
    execution holds a live lease (``info``: its expiry); ``early``: the run is parked
    until ``info`` (its timer was put back); ``missing``: no such run."""

    reason: Literal["done", "busy", "early", "missing"]
    info: str = ""


@dataclass(frozen=True)
class Resolution:
    """What resolving a waiting step from outside its run did. ``woken``: the run was
    parked and is now queued, publish it to ``route``; ``executing``: it sees the new
    record when it next parks; ``none``: nothing waited (already resolved, or final)."""

    outcome: Literal["woken", "executing", "none"]
    route: Route | None = None


@dataclass(frozen=True)
class Dispatch:
    """A run about to be published: its status and where its message goes."""

    status: str
    route: Route


@dataclass(frozen=True)
class FlowKey:
    """One flow-control key: ``kind`` (idempotency, rate, singleton, throttle, debounce,
    batch), the scope (a function id) and the key's value in the event."""

    kind: str
    scope: str
    value: str

    def dumps(self) -> str:
        return f"{self.kind}|{self.scope}|{self.value}"

    @classmethod
    def loads(cls, text: str) -> FlowKey | None:
        """The key written by ``dumps``; None for anything else (a record of 0.1)."""
        parts = text.split("|", 2)
        return cls(*parts) if len(parts) == 3 else None


@dataclass(frozen=True)
class SlotSet:
    """One concurrency limit as it applies to one run: its scope (a function id, or
    ``global:<key path>``), the key's value, and the limit."""

    scope: str
    value: str
    limit: int


@dataclass(frozen=True)
class Gate:
    """``gate``'s answer: ``ok`` (slots taken), ``wait`` (queued for a slot; a release
    enqueues the run) or ``later`` (throttled until ``when``; a timer wakes it)."""

    kind: Literal["ok", "wait", "later"]
    when: int = 0
