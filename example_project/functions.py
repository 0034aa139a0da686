"""The weekly-activity functions (DESIGN §1).

Every Friday at noon ``weekly-activity-load-users`` loads the users and sends one
``app/weekly-email-activity.send`` event per user; each event starts one
``weekly-activity-send-email`` run, which loads that user's numbers and emails them.

What to watch for:

- the fan-out is one checkpointed ``send_event`` step: a replay sends nothing twice;
- a transient mail error retries only the ``email-user`` step: ``load-user-data`` is
  memoized and is not executed again (its body counts its executions to prove it);
- an invalid address raises ``NonRetriableError``: that one run fails at once, the
  others are unaffected, and the ``on_failure`` handler marks the address as bouncing;
- each email waits for its send window with a durable ``sleep_until`` step, which holds
  no worker while it waits. The window opens at the fan-out here, so in the demo it is
  already open and no run waits (a real deployment might open it at 9:00 in each
  user's time zone).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fanout_celery import Context, Event, RetryPolicy

from . import mailer, users
from .app import fanout

SEND_EVENT = "app/weekly-email-activity.send"

# Short back-off so the demo finishes in seconds; a real deployment would wait longer.
EMAIL_RETRIES = RetryPolicy(max_retries=3, backoff=0.2, jitter=0)


def load_user_data(user_id: int) -> dict[str, Any]:
    """The user's weekly numbers (counts its own executions, see the module doc)."""
    users.count_execution("load-user-data", user_id)
    return users.weekly_activity(user_id)


def compose(user: dict[str, Any], data: dict[str, Any]) -> tuple[str, str]:
    """Subject and body of the weekly email."""
    first = user["name"].split()[0]
    subject = f"Your week: {data['sessions']} sessions, {data['minutes']} minutes"
    body = (
        f"Hi {first},\n\n"
        f"This week you had {data['sessions']} sessions across {data['projects']} "
        f"project(s), {data['minutes']} minutes in total.\n\n"
        f"-- The team ({user['plan']} plan)\n"
    )
    return subject, body


def send_window_opens(event: Event) -> datetime:
    """When the email may go out: the event's ``send_after`` (ms), else its own time."""
    ms = event.data.get("send_after") or event.ts or 0
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def email_user(user: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    subject, body = compose(user, data)
    outbox_id = mailer.send(user["id"], user["email"], subject, body)
    return {"outbox_id": outbox_id, "to": user["email"]}


@fanout.function(id="weekly-activity-load-users", cron="0 12 * * 5")
def load_cron(ctx: Context) -> dict[str, Any]:
    """Fan out one email event per user."""
    all_users = ctx.step.run("fetch-users", users.list_users)
    # This week's send window opens now (the trigger's time, the same on every replay).
    events = [Event(name=SEND_EVENT, data={"user": u, "send_after": ctx.event.ts})
              for u in all_users]
    ctx.step.send_event("send-events", events)
    return {"count": len(all_users)}


def record_bounce(ctx: Context) -> dict[str, Any]:
    """``on_failure`` of the email function: mark the user's address as bouncing."""
    failure = ctx.event.data
    user = failure["event"]["data"]["user"]
    reason = f"{failure['error']['type']}: {failure['error']['message']}"
    ctx.step.run("mark-bouncing", users.mark_bouncing, user["id"], user["email"], reason,
                 failure["run_id"], ctx.run_id)
    return {"user_id": user["id"], "reason": reason}


@fanout.function(id="weekly-activity-send-email", event=SEND_EVENT, retries=EMAIL_RETRIES,
                 on_failure=record_bounce)
def send_reminder(ctx: Context) -> dict[str, Any]:
    """Email one user their week."""
    user = ctx.event.data["user"]
    # Durable: a window still closed parks the run in Redis, holding no worker.
    ctx.step.sleep_until("wait-for-send-window", send_window_opens(ctx.event))
    data = ctx.step.run("load-user-data", load_user_data, user["id"])
    sent: dict[str, Any] = ctx.step.run("email-user", email_user, user, data)
    return sent
