"""Cron functions through the user's own ``celery beat``.

One beat entry, ``fanout.cron``, runs every ``fanout_cron_interval`` seconds (1 s by
default) and sends the ``fanout.cron`` task; a worker runs it and fires whatever is due,
using croniter and a per-function mark in Redis. An interval entry is the one kind of
entry every scheduler stores (the default one, celery-redbeat, django-celery-beat), so
no scheduler-specific code is needed, and the user's own ``beat_schedule`` entries are
merged with it, never replaced.

Each slot is one run: its event id and run id derive from the function id and the
slot time, so two beats, a restarted beat or a redelivered tick start a slot once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .cron import due_slots, next_fire_times, parse_cron
from .events import SCHEDULED_TIMER, derived_id, now_ms

if TYPE_CHECKING:
    from .fanout import Fanout

logger = logging.getLogger("fanout.beat")

TASK_NAME = "fanout.cron"
DEFAULT_INTERVAL = 1.0


def install(fanout: Fanout) -> None:
    """Register the dispatcher task and its beat entry (once per app)."""
    app = fanout.app
    if TASK_NAME in app.tasks:
        return

    def cron_tick() -> int:
        return dispatch(fanout)

    # shared=False: a shared task would be added to every Celery app created later in the
    # process, which would then skip this install and dispatch this app's functions.
    app.task(cron_tick, name=TASK_NAME, lazy=False, shared=False, ignore_result=True,
             serializer="json")
    interval = float(app.conf.get("fanout_cron_interval", DEFAULT_INTERVAL))
    # add_periodic_task defers to after configuration when the app is not configured
    # yet, so entries from a config module are merged, not overwritten.
    app.add_periodic_task(interval, app.signature(TASK_NAME), name=TASK_NAME,
                          expires=max(interval * 5, 5.0))


def dispatch(fanout: Fanout, now: int | None = None) -> int:
    """Fire every due cron slot of every published cron function; returns runs started."""
    now = now_ms() if now is None else now
    subs = [s for s in fanout.router.all().values() if s.crons]
    if not subs:
        return 0
    marks = fanout.store.cron_marks([s.function_id for s in subs])
    started = 0
    for sub, last in zip(subs, marks, strict=True):
        slots: set[int] = set()
        for text in sub.crons:
            spec = parse_cron(text)
            slots.update(due_slots(spec, last, now, sub.missed, sub.missed_limit))
        for slot in sorted(slots):
            record = timer_event(sub.function_id, slot, sub.crons)
            started += fanout.start_scheduled(sub, record)
    fanout.store.set_cron_marks({s.function_id: now for s in subs})
    return started


def timer_event(function_id: str, slot_ms: int, crons: tuple[str, ...]) -> dict[str, Any]:
    """The ``fanout/scheduled.timer`` event of one slot (its id derives from the slot)."""
    matching = [c for c in crons if _fires_at(parse_cron(c), slot_ms)] or list(crons)
    spec = parse_cron(matching[0])
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


def _fires_at(spec: Any, slot_ms: int) -> bool:
    from croniter import croniter

    local = datetime.fromtimestamp(slot_ms / 1000, tz=spec.tz).replace(tzinfo=None)
    return bool(croniter.match(spec.expr, local))


def schedules(fanout: Fanout, count: int = 3) -> list[dict[str, Any]]:
    """Each cron function with its expressions and next ``count`` fire times."""
    now = now_ms()
    out = []
    for sub in sorted(fanout.router.all().values(), key=lambda s: s.function_id):
        for text in sub.crons:
            spec = parse_cron(text)
            out.append({"function_id": sub.function_id, "cron": text, "zone": spec.zone,
                        "missed": sub.missed, "next": next_fire_times(spec, now, count)})
    return out
