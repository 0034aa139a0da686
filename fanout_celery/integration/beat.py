"""Cron functions through the user's own ``celery beat``.

One beat entry, ``fanout.cron``, runs every ``fanout_cron_interval`` seconds (1 s by
default) and sends the ``fanout.cron`` task; a worker runs it and fires whatever is due
(``engine/cron.py``). An interval entry is the one kind of entry every scheduler stores
(the default one, celery-redbeat, django-celery-beat), so no scheduler-specific code is
needed, and the user's own ``beat_schedule`` entries are merged with it, never replaced.
"""

from __future__ import annotations

from typing import Any

from ..model.settings import read_setting
from .host import Host

TASK_NAME = "fanout.cron"


def install(app: Any, host: Host) -> None:
    """Register the dispatcher task and its beat entry (once per app)."""
    if TASK_NAME in app.tasks:
        return

    def cron_tick() -> int:
        return host.engine.cron.fire_due()

    # shared=False: a shared task would be added to every Celery app created later in the
    # process, which would then skip this install and dispatch this app's functions.
    app.task(cron_tick, name=TASK_NAME, lazy=False, shared=False, ignore_result=True,
             serializer="json")

    interval = read_setting(app, "cron_interval")
    # add_periodic_task defers to after configuration when the app is not configured
    # yet, so entries from a config module are merged, not overwritten.
    app.add_periodic_task(interval, app.signature(TASK_NAME), name=TASK_NAME,
                          expires=max(interval * 5, 5.0))
