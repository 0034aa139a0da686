"""Cron expressions: parsing and validation (``TZ=Europe/Paris 0 12 * * 5``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from ..errors import ConfigurationError


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron trigger: the expression, its zone, and the original text."""

    text: str
    expr: str
    zone: str = "UTC"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)


def parse_cron(text: object, default_zone: str = "UTC") -> CronSpec:
    """Validate a 5-field (or croniter's 6-field, with seconds) expression with an
    optional ``TZ=<IANA zone> `` prefix; a bad one is ``ConfigurationError``. Without a
    prefix the cron is in ``default_zone`` (the Celery app's ``timezone``)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(f"a cron expression is a non-empty string, not {text!r}")
    expr = text.strip()
    zone = default_zone
    if expr.startswith(("TZ=", "CRON_TZ=")):
        head, _, expr = expr.partition(" ")
        zone = head.split("=", 1)[1]
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: name too long
            raise ConfigurationError(f"unknown time zone {zone!r} in cron {text!r}") from None
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ConfigurationError(
            f"cron {text!r} must have 5 fields (minute hour day month weekday), or 6 with "
            "seconds last"
        )
    if not croniter.is_valid(expr):
        raise ConfigurationError(f"cron {text!r} does not parse")
    try:
        croniter(expr).get_next(float)
    except CroniterError:
        # e.g. "0 0 31 2 *": valid syntax, no such day; it would break every beat tick.
        raise ConfigurationError(f"cron {text!r} never fires") from None
    return CronSpec(text=text, expr=" ".join(fields), zone=zone)


MISSED_POLICIES = ("none", "latest", "all")
# A slot is "on time" when the dispatcher sees it within this many seconds; older slots
# are "missed" (beat or every worker was down) and follow the function's missed policy.
ON_TIME_SECONDS = 60.0


def check_missed(policy: object, limit: object) -> tuple[str, int]:
    if policy not in MISSED_POLICIES:
        raise ConfigurationError(
            f"cron_missed must be one of {', '.join(MISSED_POLICIES)}, not {policy!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ConfigurationError(f"cron_missed_limit must be an int from 1 to 1000, not "
                                 f"{limit!r}")
    return str(policy), limit


def _valid_slot(spec: CronSpec, slot: datetime) -> bool:
    """False for a wall-clock time that does not exist (croniter shifts a slot in a
    spring-forward gap to the next hour) or for the second pass through a repeated
    hour (autumn fall-back): each wall-clock slot fires once."""
    naive = slot.replace(tzinfo=None)
    if not croniter.match(spec.expr, naive):
        return False
    first = naive.replace(tzinfo=spec.tz, fold=0)
    return int(first.timestamp()) == int(slot.timestamp())


def recent_slots(spec: CronSpec, after_ms: int, until_ms: int, limit: int) -> list[int]:
    """The most recent ``limit`` valid slots in ``(after_ms, until_ms]``, ascending, as
    epoch milliseconds. Walks backwards from ``until``, so a long outage costs nothing."""
    start = datetime.fromtimestamp((until_ms + 1) / 1000, tz=spec.tz)
    it = croniter(spec.expr, start)
    out: list[int] = []
    while len(out) < limit:
        slot = it.get_prev(datetime)
        ms = int(slot.timestamp() * 1000)
        if ms <= after_ms:
            break
        if _valid_slot(spec, slot):
            out.append(ms)
    out.reverse()
    return out


def due_slots(spec: CronSpec, last_ms: int | None, now_ms: int, missed: str,
              missed_limit: int) -> list[int]:
    """Slots to fire now, given the last time this function's crons were examined.

    ``latest`` fires only the most recent due slot after an outage, ``all`` up to
    ``missed_limit`` of them, ``none`` only slots that are on time.
    """
    grace_ms = int(ON_TIME_SECONDS * 1000)
    after = now_ms - grace_ms if last_ms is None else max(last_ms, now_ms - 366 * 86400_000)
    if missed == "none":
        return recent_slots(spec, max(after, now_ms - grace_ms), now_ms, 1000)
    if missed == "latest":
        return recent_slots(spec, after, now_ms, 1)
    return recent_slots(spec, after, now_ms, missed_limit)


def next_fire_times(spec: CronSpec, now_ms: int, count: int = 3) -> list[datetime]:
    """The next ``count`` valid fire times after ``now_ms``, in the cron's zone."""
    it = croniter(spec.expr, datetime.fromtimestamp(now_ms / 1000, tz=spec.tz))
    out: list[datetime] = []
    while len(out) < count:
        slot = it.get_next(datetime)
        if _valid_slot(spec, slot):
            out.append(slot)
    return out
