"""Cron functions through the user's own ``celery beat``: one beat entry per cron.

Each cron expression of a function becomes an entry of the app's ``beat_schedule``,
named ``fanout.cron <function id>``, with Celery's own ``crontab`` schedule when the
expression is one Celery can read in the app's zone: beat then wakes when a slot is due
and ``celery beat`` lists the functions' schedules like any other. The entry sends the
``fanout.cron`` task with the function id; a worker fires the function's due slots
(``engine/cron.py``), which is where the guarantees live: each slot's run id derives
from the slot, so two beats (or a redelivered message) start it once; croniter decides
which slots exist across DST changes; missed slots follow the function's policy.

A cron Celery's ``crontab`` cannot express — in another zone than the app's (a ``TZ=``
prefix), or with croniter's extensions — gets an entry every minute (the worker then
finds whether a slot is due); one with seconds (croniter's 6-field form) an entry every
``fanout_cron_interval`` seconds. Every scheduler stores these entries: the default one,
celery-redbeat, django-celery-beat.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from ..model.cron import CronSpec, parse_cron
from ..model.definition import FunctionDef
from ..model.settings import app_timezone, read_setting
from .host import Host

TASK_NAME = "fanout.cron"


def cron_text(value: Any) -> Any:
    """A cron given as Celery's ``crontab(...)``, as the expression fanout reads (in the
    app's zone, as Celery reads it); anything else as it is (``declare`` checks it)."""
    if isinstance(value, crontab):
        return " ".join(str(getattr(value, f"_orig_{name}")) for name in (
            "minute", "hour", "day_of_month", "month_of_year", "day_of_week"))
    if isinstance(value, (list, tuple)):
        return [cron_text(v) for v in value]
    return value


def entry_name(function_id: str, index: int, count: int) -> str:
    return f"{TASK_NAME} {function_id}" + (f" #{index + 1}" if count > 1 else "")


def beat_schedule_of(spec: CronSpec, app_zone: str, interval: float) -> Any:
    """Celery's schedule that wakes beat for ``spec``'s slots (see the module docstring)."""
    fields = spec.expr.split()
    if len(fields) == 6:
        return interval
    if spec.zone == app_zone:
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        try:
            return crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                           month_of_year=month_of_year, day_of_week=day_of_week)
        except Exception:  # croniter's syntax beyond Celery's: wake every minute instead
            pass
    return crontab(minute="*")


def install(app: Any, host: Host, definition: FunctionDef) -> None:
    """Register the ``fanout.cron`` task (once per app) and the function's beat entries."""
    if TASK_NAME not in app.tasks:
        def cron_tick(function: str | None = None) -> int:
            return host.engine.cron.fire_due(only=function)

        # shared=False: a shared task would be added to every Celery app created later in
        # the process, which would then skip this install and fire this app's functions.
        app.task(cron_tick, name=TASK_NAME, lazy=False, shared=False, ignore_result=True,
                 serializer="json")

    def add_entries(sender: Any = None, **kwargs: Any) -> None:
        zone = app_timezone(app.conf)
        interval = read_setting(app, "cron_interval")
        for i, text in enumerate(definition.crons):
            schedule = beat_schedule_of(parse_cron(text, zone), zone, interval)
            app.add_periodic_task(
                schedule, app.signature(TASK_NAME, kwargs={"function": definition.function_id}),
                name=entry_name(definition.function_id, i, len(definition.crons)),
                expires=60.0 if isinstance(schedule, crontab) else max(interval * 5, 5.0))

    # The app's zone is read once it is configured, so entries from a config module are
    # merged, not overwritten, and a timezone set after Fanout(app) counts.
    if app.configured:
        add_entries()
    else:
        app.on_after_configure.connect(add_entries, weak=False)
