"""``celery fanout`` commands that read: functions, send, runs, run, events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from ..model.runs import STATUSES
from .group import _fanout, _run_id, _when, fanout
from .render import ago, describe, secs, styled, table


@fanout.command()
@click.pass_context
def functions(ctx: click.Context) -> None:
    """Each function with its triggers, retry policy, queue and next cron fire times.

    \b
    Example:
        celery -A proj fanout functions
    """
    fo = _fanout(ctx)
    nexts: dict[str, list[str]] = {}
    for entry in fo.schedules(count=1):
        nexts.setdefault(entry["function_id"], []).append(entry["next"][0].isoformat())
    paused = fo.paused()
    rows = []
    for fid, sub in sorted(fo.engine.router.all().items()):
        local = fo.functions.get(fid)
        retries = str(local.definition.retry_policy.max_retries) if local else "?"
        triggers = ", ".join([*sub.events, *(f"cron {c}" for c in sub.crons)])
        rows.append([fid, triggers or "(invoke only)", retries, sub.queue or "(default)",
                     ", ".join(nexts.get(fid, [])) or "-",
                     f"paused ({paused[fid]})" if fid in paused else "active"])
    table(rows, ["FUNCTION", "TRIGGERS", "RETRIES", "QUEUE", "NEXT CRON", "STATE"])


@fanout.command()
@click.argument("name", required=False)
@click.option("--data", help="the event's data, a JSON object")
@click.option("--file", "path", type=click.File("r"),
              help="a JSON event or list of events ({name, data, id?}); - for stdin")
@click.pass_context
def send(ctx: click.Context, name: str | None, data: str | None, path: Any) -> None:
    """Send an event (NAME --data JSON) or the events of a JSON file.

    \b
    Examples:
        celery -A proj fanout send app/user.signup --data '{"user_id": 7}'
        celery -A proj fanout send --file events.json
    """
    fo = _fanout(ctx)
    try:
        if path is not None:
            events = json.load(path)
        elif name:
            events = {"name": name, "data": json.loads(data) if data else {}}
        else:
            raise click.UsageError("give an event NAME or --file")
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    for event_id in fo.send(events):
        click.echo(event_id)


@fanout.command()
@click.option("--function", "function_id", help="only runs of this function")
@click.option("--status", type=click.Choice(STATUSES), help="only runs in this status")
@click.option("--since", help="created after (ISO time, or 10m / 2h / 7d ago)")
@click.option("--until", help="created before (ISO time, or a duration ago)")
@click.option("--event", "event_id", help="only runs started by this event id")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="runs per page")
@click.option("--page", default=1, show_default=True, type=click.IntRange(min=1),
              help="page number")
@click.pass_context
def runs(ctx: click.Context, function_id: str | None, status: str | None, since: str | None,
         until: str | None, event_id: str | None, limit: int, page: int) -> None:
    """Recent runs, newest first.

    \b
    Example:
        celery -A proj fanout runs --function weekly-activity-send-email --status failed
    """
    fo = _fanout(ctx)
    result = fo.list_runs(function=function_id, status=status, since=_when(since),
                          until=_when(until), event_id=event_id, limit=limit,
                          offset=(page - 1) * limit)
    rows = [[r.id, r.function_id, styled(r.status), ago(r.created_at),
             secs(r.duration), str(len(r.steps)),
             (r.error or {}).get("message", "")[:60]] for r in result.runs]
    table(rows, ["RUN", "FUNCTION", "STATUS", "CREATED (UTC)", "DURATION", "STEPS", "ERROR"])
    if result.more:
        click.echo(f"(more: --page {page + 1})")


@fanout.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--depth", default=3, show_default=True, help="levels of child runs to show")
@click.pass_context
def run(ctx: click.Context, run_id: str, as_json: bool, depth: int) -> None:
    """A run as a tree: trigger event, steps, events sent and child runs, parked timers
    and waits, and a waterfall of queue vs execution time per step.

    \b
    Example:
        celery -A proj fanout run 1f3a9c0e5b7d4e21a8c6f0b2d4e6a8c0 --depth 2
    """
    fo = _fanout(ctx)
    node = fo.run_tree(_run_id(fo, run_id), depth=depth)
    if node is None:
        raise click.ClickException(f"no run {run_id} (unknown or expired)")
    if as_json:
        click.echo(json.dumps(node.as_dict(), default=str, indent=2))
        return
    describe(node)


@fanout.command()
@click.option("--name", help="only events with this name")
@click.option("--since", help="stored after (ISO time or a duration ago)")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def events(ctx: click.Context, name: str | None, since: str | None, limit: int) -> None:
    """Recent events, newest first, with the runs each started.

    \b
    Example:
        celery -A proj fanout events --name app/weekly-email-activity.send --since 1h
    """
    fo = _fanout(ctx)
    rows = []
    for event, run_ids in fo.list_events(name=name, since=_when(since), limit=limit):
        when = datetime.fromtimestamp(event.get("ts", 0) / 1000, tz=UTC)
        rows.append([event["id"], event["name"], ago(when), str(len(run_ids)),
                     ", ".join(rid[:12] for rid in run_ids[:4])])
    table(rows, ["EVENT", "NAME", "TIME (UTC)", "RUNS", "RUN IDS"])
