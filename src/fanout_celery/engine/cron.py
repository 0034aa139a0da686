"""Firing cron slots: every due slot of every published cron function starts one run.

Each slot is one run: its event id and run id derive from the function id and the slot
time, so two beats, a restarted beat or a redelivered tick start a slot once. Which
process calls ``fire_due`` (a beat tick, through a worker) is the integration's concern.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from ..model.cron import CronSpec, due_slots, next_fire_times, parse_cron
from ..model.events import SCHEDULED_TIMER, derived_id, now_ms, prepare
from ..model.settings import Settings
from ..store.port import Store
from .dispatcher import Dispatcher
from .pauses import Pauses
from .router import Router


def timer_event(function_id: str, slot_ms: int, crons: tuple[str, ...],
                zone: str = "UTC") -> dict[str, Any]:
    """The ``fanout/scheduled.timer`` event of one slot (its id derives from the slot);
    ``zone``: the zone of crons without a ``TZ=`` prefix."""
    matching = [c for c in crons if _fires_at(parse_cron(c, zone), slot_ms)] or list(crons)
    spec = parse_cron(matching[0], zone)
    when = datetime.fromtimestamp(slot_ms / 1000, tz=UTC)
    return {
        "name": SCHEDULED_TIMER,
        "id": derived_id(function_id, "cron", str(slot_ms)),
        "ts": slot_ms,
        "data": {"cron": spec.text, "expr": spec.expr, "zone": spec.zone,
                 "scheduled_at": when.isoformat(),
                 "scheduled_local": when.astimezone(spec.tz).isoformat(),
                 "scheduled_ms": slot_ms},
    }


def _fires_at(spec: CronSpec, slot_ms: int) -> bool:
    local = datetime.fromtimestamp(slot_ms / 1000, tz=spec.tz).replace(tzinfo=None)
    return bool(croniter.match(spec.expr, local))


class CronScheduler:
    """Fires due cron slots from the store's per-function marks."""

    def __init__(self, store: Store, router: Router, dispatcher: Dispatcher,
                 settings: Settings, pauses: Pauses | None = None) -> None:
        self.store = store
        self.router = router
        self.dispatcher = dispatcher
        self.settings = settings
        self.pauses = pauses

    def fire_due(self, now: int | None = None, only: str | None = None) -> int:
        """Fire every due slot of every published cron function (``only``: of that
        function); returns runs started."""
        now = now_ms() if now is None else now
        zone = self.settings.timezone
        # A paused function fires nothing and keeps its mark: on resume, its missed-slot
        # policy decides what the slots it missed meanwhile become.
        paused = self.pauses.all() if self.pauses is not None else {}
        subs = [s for s in self.router.all().values()
                if s.crons and (only is None or s.function_id == only)
                and s.function_id not in paused]
        if not subs:
            return 0
        marks = self.store.cron_marks([s.function_id for s in subs])
        started = 0
        for sub, last in zip(subs, marks, strict=True):
            slots: set[int] = set()
            for text in sub.crons:
                slots.update(due_slots(parse_cron(text, zone), last, now, sub.missed,
                                       sub.missed_limit))
            for slot in sorted(slots):
                event = prepare(timer_event(sub.function_id, slot, sub.crons, zone),
                                max_bytes=self.settings.max_event_bytes, allow_system=True)
                started += self.dispatcher.dispatch([event], only=sub)
        self.store.set_cron_marks({s.function_id: now for s in subs})
        return started

    def schedules(self, count: int = 3) -> list[dict[str, Any]]:
        """Each cron function with its expressions and next ``count`` fire times."""
        now = now_ms()
        out = []
        for sub in sorted(self.router.all().values(), key=lambda s: s.function_id):
            for text in sub.crons:
                spec = parse_cron(text, self.settings.timezone)
                out.append({"function_id": sub.function_id, "cron": text, "zone": spec.zone,
                            "missed": sub.missed, "next": next_fire_times(spec, now, count)})
        return out
