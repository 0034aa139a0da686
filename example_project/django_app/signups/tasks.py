"""Found by ``app.autodiscover_tasks()``: fanout functions and a plain Celery task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from example_project.django_app.celery import app, fanout
from fanout_celery import Context, RetryPolicy

from .models import SIGNED_UP, Signup


def load_signup(signup_id: int) -> dict[str, Any]:
    signup = Signup.objects.get(pk=signup_id)
    return {"id": signup.pk, "email": signup.email}


def send_welcome(signup: dict[str, Any]) -> dict[str, Any]:
    # A real project calls its mail backend here (django.core.mail.send_mail).
    return {"to": signup["email"], "subject": "Welcome!"}


def mark_welcomed(signup_id: int) -> str:
    now = timezone.now()
    Signup.objects.filter(pk=signup_id).update(welcomed_at=now)
    return now.isoformat()


@fanout.function(id="signups-welcome", event=SIGNED_UP,
                 retries=RetryPolicy(max_retries=3, backoff=5))
def welcome(ctx: Context) -> dict[str, Any]:
    """Welcome one new signup: each step runs once, whatever is retried."""
    signup = ctx.step.run("load-signup", load_signup, ctx.event.data["signup_id"])
    ctx.step.run("send-welcome", send_welcome, signup)
    ctx.step.run("mark-welcomed", mark_welcomed, signup["id"])
    return {"welcomed": signup["email"]}


def count_signups(since_iso: str) -> int:
    return Signup.objects.filter(created_at__gte=since_iso).count()


@fanout.function(id="signups-daily-report", cron="TZ=UTC 0 8 * * *")
def daily_report(ctx: Context) -> dict[str, Any]:
    """Every morning: how many signed up in the day before the slot."""
    # The slot's time (an invoked run has none: its event's time), the same on replays.
    slot_ms = ctx.event.data.get("scheduled_ms") or ctx.event.ts
    since = datetime.fromtimestamp(slot_ms / 1000, tz=UTC) - timedelta(days=1)
    return {"signups": ctx.step.run("count", count_signups, since.isoformat())}


@app.task(name="signups.purge_unwelcomed")
def purge_unwelcomed() -> int:
    """A plain Celery task on CELERY_BEAT_SCHEDULE, beside fanout's cron entry."""
    stale = timezone.now() - timedelta(days=30)
    deleted, _ = Signup.objects.filter(welcomed_at=None, created_at__lt=stale).delete()
    return deleted
