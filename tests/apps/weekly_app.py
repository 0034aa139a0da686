"""A Celery app with one weekly cron function, for the beat test that checks beat sleeps
between slots (a Celery ``crontab`` entry) instead of ticking every second."""

from __future__ import annotations

from typing import Any

from .base import worker_app

app, fanout, r = worker_app("weekly_app")


@fanout.function("weekly-report", cron="0 12 * * 5", retries=0)
def weekly_report(ctx: Any) -> None:
    return None
