"""Cron expressions: parsing and validation (``TZ=Europe/Paris 0 12 * * 5``)."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import ConfigurationError


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron trigger: the expression, its zone, and the original text."""

    text: str
    expr: str
    zone: str = "UTC"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)


def parse_cron(text: object) -> CronSpec:
    """Validate a 5-field (or croniter's 6-field, with seconds) expression with an
    optional ``TZ=<IANA zone> `` prefix; a bad one is ``ConfigurationError``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(f"a cron expression is a non-empty string, not {text!r}")
    expr = text.strip()
    zone = "UTC"
    if expr.startswith(("TZ=", "CRON_TZ=")):
        head, _, expr = expr.partition(" ")
        zone = head.split("=", 1)[1]
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"unknown time zone {zone!r} in cron {text!r}") from None
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ConfigurationError(
            f"cron {text!r} must have 5 fields (minute hour day month weekday), or 6 with "
            "seconds last"
        )
    if not croniter.is_valid(expr):
        raise ConfigurationError(f"cron {text!r} does not parse")
    return CronSpec(text=text, expr=" ".join(fields), zone=zone)
