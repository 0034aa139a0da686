"""Options that end runs early: ``cancel_on`` and ``timeouts``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..errors import ConfigurationError, InvalidStepError
from .durations import parse_duration
from .patterns import check_path, check_pattern


@dataclass(frozen=True)
class CancelOn:
    """Cancel a run when an event named ``event`` arrives whose ``match`` path equals
    the same path in the run's trigger event (any such event when ``match`` is None),
    within ``timeout`` of the run's start (forever when None)."""

    event: str
    match: str | None = None
    timeout: float | timedelta | str | None = None

    def __post_init__(self) -> None:
        try:
            check_pattern(self.event)
            if "*" in self.event:
                raise ConfigurationError("cancel_on takes an exact event name, not a wildcard")
            if self.match is not None:
                check_path(self.match, "cancel_on match")
            if self.timeout is not None:
                parse_duration(self.timeout, "cancel_on timeout", allow_zero=False)
        except InvalidStepError as exc:
            raise ConfigurationError(str(exc)) from None

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else parse_duration(self.timeout)

    def as_list(self) -> list[Any]:
        return [self.event, self.match, self.timeout_seconds]


@dataclass(frozen=True)
class Timeouts:
    """``start``: cancel a run still queued this long after it was created;
    ``finish``: cancel a run not finished this long after it first started."""

    start: float | timedelta | str | None = None
    finish: float | timedelta | str | None = None

    def __post_init__(self) -> None:
        if self.start is None and self.finish is None:
            raise ConfigurationError("Timeouts needs start, finish or both")
        for name in ("start", "finish"):
            value = getattr(self, name)
            if value is not None:
                try:
                    seconds = parse_duration(value, f"timeouts.{name}", allow_zero=False)
                except InvalidStepError as exc:
                    raise ConfigurationError(str(exc)) from None
                object.__setattr__(self, name, seconds)

    @property
    def start_seconds(self) -> float | None:
        return None if self.start is None else parse_duration(self.start)

    @property
    def finish_seconds(self) -> float | None:
        return None if self.finish is None else parse_duration(self.finish)


def coerce_cancel_on(value: Any) -> tuple[CancelOn, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, CancelOn) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, CancelOn) for i in items):
        raise ConfigurationError("cancel_on must be a CancelOn or a list of them")
    return tuple(items)
