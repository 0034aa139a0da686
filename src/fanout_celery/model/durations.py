"""Durations and instants given by users: ``30``, ``timedelta``, ``"1h30m"``, datetimes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import InvalidStepError

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
MAX_SECONDS = 366 * 86400


def parse_duration(value: Any, what: str = "duration", *, allow_zero: bool = True) -> float:
    """Seconds from a number, a ``timedelta`` or a string like ``"30s"``, ``"2h"``,
    ``"1h30m"``, ``"7d"``; at most a year. Anything else is ``InvalidStepError``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            raise InvalidStepError(f"{what} {value!r} is longer than a year") from None
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = PART_RE.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise InvalidStepError(
                f"{what} {value!r} is not a duration: use seconds, a timedelta, or a string "
                "such as '30s', '15m', '2h', '1h30m', '7d'"
            )
        seconds = sum(float(n) * UNITS[u] for n, u in parts)
    else:
        raise InvalidStepError(
            f"{what} must be seconds, a timedelta or a string such as '2h', not "
            f"{type(value).__name__}"
        )
    if seconds != seconds or seconds < 0 or (seconds == 0 and not allow_zero):
        raise InvalidStepError(f"{what} must be {'>=' if allow_zero else '>'} 0, got {value!r}")
    if seconds > MAX_SECONDS:
        raise InvalidStepError(f"{what} {value!r} is longer than a year")
    return seconds


def instant_ms(value: Any, what: str = "time") -> int:
    """Epoch milliseconds of a ``datetime`` (naive means UTC)."""
    if not isinstance(value, datetime):
        raise InvalidStepError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)
