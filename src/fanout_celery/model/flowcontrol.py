"""Flow control options of ``@fanout.function``, enforced in Redis across every worker.

- ``concurrency``: at most ``limit`` runs executing at once per key (parked runs hold no
  slot); the rest wait in a per-key queue and start when a slot frees.
- ``throttle``: run starts spaced by GCRA (``limit`` per ``period``, ``burst`` at once);
  excess runs are delayed, not dropped.
- ``rate_limit``: at most ``limit`` runs created per ``period``; excess runs are recorded
  as ``skipped`` and their events kept.
- ``debounce``: one run with the last event after ``period`` of quiet (at most
  ``timeout`` after the first).
- ``batch_events``: one run receives ``ctx.events`` when ``max_size`` events arrived or
  ``timeout`` passed since the first.
- ``priority``: an integer from the event orders runs waiting for a concurrency slot.
- ``singleton``: one active run per key; a new one is skipped, or cancels the old one.
- ``idempotency``: one run per key value per 24 hours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from ..errors import ConfigurationError, InvalidStepError
from .durations import parse_duration
from .events import derived_id
from .patterns import check_path, resolve_path

PRIORITY_RANGE = 600  # priorities are clamped to -600..600, as Inngest does
IDEMPOTENCY_WINDOW = 86400.0


def _seconds(value: Any, what: str) -> float:
    try:
        return parse_duration(value, what, allow_zero=False)
    except InvalidStepError as exc:
        raise ConfigurationError(str(exc)) from None


def _limit(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive integer, not {value!r}")
    return value


def _key(value: Any, what: str) -> str | None:
    if value is None:
        return None
    path = value[len("event."):] if isinstance(value, str) and value.startswith("event.") \
        else value
    try:
        return check_path(path, what)
    except InvalidStepError as exc:
        raise ConfigurationError(str(exc)) from None


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` runs executing at once per value of ``key`` (a dotted path in
    the event, e.g. ``"event.data.account_id"``). ``scope="global"`` shares the limit
    with every function that declares the same key."""

    limit: int
    key: str | None = None
    scope: str = "function"

    def __post_init__(self) -> None:
        _limit(self.limit, "Concurrency limit")
        object.__setattr__(self, "key", _key(self.key, "Concurrency key"))
        if self.scope not in ("function", "global"):
            raise ConfigurationError(f"Concurrency scope is 'function' or 'global', not "
                                     f"{self.scope!r}")
        if self.scope == "global" and self.key is None:
            raise ConfigurationError("a global Concurrency needs a key")


@dataclass(frozen=True)
class Throttle:
    """At most ``limit`` run starts per ``period`` (per ``key``), ``burst`` at once;
    excess runs are delayed."""

    limit: int
    period: float | timedelta | str
    burst: int = 1
    key: str | None = None

    def __post_init__(self) -> None:
        _limit(self.limit, "Throttle limit")
        _limit(self.burst, "Throttle burst")
        object.__setattr__(self, "period", _seconds(self.period, "Throttle period"))
        object.__setattr__(self, "key", _key(self.key, "Throttle key"))


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` runs per ``period`` (per ``key``); excess runs are skipped."""

    limit: int
    period: float | timedelta | str
    key: str | None = None

    def __post_init__(self) -> None:
        _limit(self.limit, "RateLimit limit")
        object.__setattr__(self, "period", _seconds(self.period, "RateLimit period"))
        object.__setattr__(self, "key", _key(self.key, "RateLimit key"))


@dataclass(frozen=True)
class Debounce:
    """One run with the last event after ``period`` without events (per ``key``);
    ``timeout`` caps the delay after the first event."""

    period: float | timedelta | str
    key: str | None = None
    timeout: float | timedelta | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "period", _seconds(self.period, "Debounce period"))
        object.__setattr__(self, "key", _key(self.key, "Debounce key"))
        if self.timeout is not None:
            object.__setattr__(self, "timeout", _seconds(self.timeout, "Debounce timeout"))


@dataclass(frozen=True)
class Batch:
    """One run receives up to ``max_size`` events (``ctx.events``), started when full or
    ``timeout`` after its first event (per ``key``)."""

    max_size: int
    timeout: float | timedelta | str
    key: str | None = None

    def __post_init__(self) -> None:
        _limit(self.max_size, "Batch max_size")
        object.__setattr__(self, "timeout", _seconds(self.timeout, "Batch timeout"))
        object.__setattr__(self, "key", _key(self.key, "Batch key"))


@dataclass(frozen=True)
class Priority:
    """``run``: a dotted path to an integer in the event (``"event.data.priority"``);
    higher runs first among runs waiting for a concurrency slot."""

    run: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", _key(self.run, "Priority run"))


@dataclass(frozen=True)
class Singleton:
    """One active run per ``key``: a new one is skipped (``mode="skip"``) or cancels
    the active one (``mode="cancel"``)."""

    key: str | None = None
    mode: str = "skip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", _key(self.key, "Singleton key"))
        if self.mode not in ("skip", "cancel"):
            raise ConfigurationError(f"Singleton mode is 'skip' or 'cancel', not {self.mode!r}")


@dataclass(frozen=True)
class FlowControl:
    """The flow-control options of one function (validated together)."""

    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    batch: Batch | None = None
    priority: Priority | None = None
    singleton: Singleton | None = None
    idempotency: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, concurrency: Any = None, throttle: Any = None, rate_limit: Any = None,
              debounce: Any = None, batch_events: Any = None, priority: Any = None,
              singleton: Any = None, idempotency: Any = None) -> FlowControl:
        conc: tuple[Concurrency, ...] = ()
        if concurrency is not None:
            if isinstance(concurrency, int) and not isinstance(concurrency, bool):
                concurrency = Concurrency(concurrency)
            items = [concurrency] if isinstance(concurrency, Concurrency) else concurrency
            if not isinstance(items, (list, tuple)) or not items or len(items) > 2 or \
                    not all(isinstance(c, Concurrency) for c in items):
                raise ConfigurationError("concurrency is an int, a Concurrency or a list of "
                                         "up to two of them")
            conc = tuple(items)
        for value, kind, name in ((throttle, Throttle, "throttle"),
                                  (rate_limit, RateLimit, "rate_limit"),
                                  (debounce, Debounce, "debounce"),
                                  (batch_events, Batch, "batch_events"),
                                  (priority, Priority, "priority"),
                                  (singleton, Singleton, "singleton")):
            if value is not None and not isinstance(value, kind):
                raise ConfigurationError(f"{name} must be a {kind.__name__}(...), not "
                                         f"{type(value).__name__}")
        idem = _key(idempotency, "idempotency")
        combos = [(batch_events, debounce, "batch_events and debounce: a debounced run "
                   "takes one event, a batch takes many"),
                  (batch_events, idempotency, "batch_events and idempotency: a batch run "
                   "has many events, so no single idempotency key"),
                  (batch_events, singleton, "batch_events and singleton: a batch already "
                   "collects events into one run"),
                  (debounce, rate_limit, "debounce and rate_limit: debounce already "
                   "limits runs; pick one"),
                  (singleton, debounce, "singleton and debounce: debounce already keeps "
                   "one pending run per key")]
        for a, b, why in combos:
            if a is not None and b is not None:
                raise ConfigurationError(f"cannot combine {why}")
        return cls(concurrency=conc, throttle=throttle, rate_limit=rate_limit,
                   debounce=debounce, batch=batch_events, priority=priority,
                   singleton=singleton, idempotency=idem)

    @property
    def empty(self) -> bool:
        return self == FlowControl()

    @property
    def gates_start(self) -> bool:
        return bool(self.concurrency) or self.throttle is not None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra", None)
        return {k: v for k, v in data.items() if v not in (None, (), [])}

    def dumps(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def loads(cls, raw: dict[str, Any] | None) -> FlowControl:
        if not raw:
            return cls()
        return cls(
            concurrency=tuple(Concurrency(**c) for c in raw.get("concurrency", [])),
            throttle=Throttle(**raw["throttle"]) if raw.get("throttle") else None,
            rate_limit=RateLimit(**raw["rate_limit"]) if raw.get("rate_limit") else None,
            debounce=Debounce(**raw["debounce"]) if raw.get("debounce") else None,
            batch=Batch(**raw["batch"]) if raw.get("batch") else None,
            priority=Priority(**raw["priority"]) if raw.get("priority") else None,
            singleton=Singleton(**raw["singleton"]) if raw.get("singleton") else None,
            idempotency=raw.get("idempotency"))


def key_value(path: str | None, event: dict[str, Any]) -> str:
    """The value of a key path in an event, as a short stable string ('' for no key)."""
    if path is None:
        return ""
    return derived_id(json.dumps(resolve_path(event, path), sort_keys=True, default=str))[:24]


def priority_of(flow: FlowControl, event: dict[str, Any]) -> int:
    if flow.priority is None:
        return 0
    value = resolve_path(event, flow.priority.run)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return max(-PRIORITY_RANGE, min(PRIORITY_RANGE, int(value)))
