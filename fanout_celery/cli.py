"""``celery fanout ...``: see and operate runs from the ``celery`` command.

Installed through the ``celery.commands`` entry point, so it works against the app given
with ``celery -A proj``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from .durations import parse_duration
from .errors import FanoutError
from .events import now_ms
from .fanout import Fanout, fanout_for
from .history import list_events, list_runs, replay, rerun
from .runs import STATUSES, Run
from .tree import RunNode, build_tree, format_tree

STATUS_COLOURS = {"completed": "green", "failed": "red", "cancelled": "magenta",
                  "running": "cyan", "sleeping": "blue", "waiting": "blue", "queued": "yellow"}


def _fanout(ctx: click.Context) -> Fanout:
    app = ctx.obj.app if ctx.obj is not None and hasattr(ctx.obj, "app") else None
    if app is None:
        raise click.UsageError("give the Celery app with -A, e.g. celery -A proj fanout runs")
    fanout = fanout_for(app)
    if fanout is None:
        app.loader.import_default_modules()
        fanout = fanout_for(app) or Fanout(app)
    try:
        fanout.settings  # noqa: B018 - validated here: a bad setting is a clean CLI error
    except FanoutError as exc:
        raise click.ClickException(str(exc)) from None
    return fanout


def _when(text: str | None) -> int | None:
    """ms from an ISO time or a duration back from now ("10m", "2h", "7d")."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp() * 1000)
    except ValueError:
        pass
    try:
        return now_ms() - int(parse_duration(text, "--since/--until") * 1000)
    except FanoutError as exc:
        raise click.BadParameter(f"{text!r}: use an ISO time or a duration like 10m, 2h, "
                                 f"7d ({exc})") from None


def _ago(dt: datetime | None) -> str:
    return "-" if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _status(status: str) -> str:
    return click.style(status, fg=STATUS_COLOURS.get(status))


def _table(rows: list[list[str]], header: list[str]) -> None:
    plain = [header, *rows]
    widths = [max(len(click.unstyle(r[i])) for r in plain) for i in range(len(header))]
    for n, row in enumerate(plain):
        cells = [c + " " * (w - len(click.unstyle(c))) for c, w in zip(row, widths, strict=True)]
        line = "  ".join(cells).rstrip()
        click.echo(click.style(line, bold=True) if n == 0 else line)


def _fail(exc: FanoutError) -> None:
    raise click.ClickException(str(exc))


@click.group(name="fanout")
def fanout() -> None:
    """Durable functions: list functions, send events, inspect and operate runs.

    \b
    Example:
        celery -A proj fanout runs --status failed --since 2h
    """


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
    rows = []
    for fid, sub in sorted(fo.router.all().items()):
        local = fo.functions.get(fid)
        retries = str(local.retry_policy.max_retries) if local else "?"
        triggers = ", ".join([*sub.events, *(f"cron {c}" for c in sub.crons)])
        rows.append([fid, triggers or "(invoke only)", retries, sub.queue or "(default)",
                     ", ".join(nexts.get(fid, [])) or "-"])
    _table(rows, ["FUNCTION", "TRIGGERS", "RETRIES", "QUEUE", "NEXT CRON"])


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
    try:
        for event_id in fo.send(events):
            click.echo(event_id)
    except FanoutError as exc:
        _fail(exc)


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
    result = list_runs(fo, function=function_id, status=status, since_ms=_when(since),
                       until_ms=_when(until), event_id=event_id, limit=limit,
                       offset=(page - 1) * limit)
    rows = [[r.id, r.function_id, _status(r.status), _ago(r.created_at),
             _secs(r.duration), str(len(r.steps)),
             (r.error or {}).get("message", "")[:60]] for r in result.runs]
    _table(rows, ["RUN", "FUNCTION", "STATUS", "CREATED (UTC)", "DURATION", "STEPS", "ERROR"])
    if result.more:
        click.echo(f"(more: --page {page + 1})")


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def waterfall(run: Run, width: int = 40) -> str:
    """Per step, queue/wait time (·) and execution time (█) on the run's time line."""
    if run.created_at is None or not run.steps:
        return "(no steps)"
    origin = run.created_at.timestamp()
    end = (run.ended_at or datetime.now(UTC)).timestamp()
    span = max(end - origin, 1e-3)
    lines = []
    previous = origin
    name_w = max(len(s.id) for s in run.steps)
    for step in run.steps:
        start = step.started_at.timestamp() if step.started_at else previous
        stop = step.ended_at.timestamp() if step.ended_at else end
        a = int((previous - origin) / span * width)
        b = max(int((start - origin) / span * width), a)
        c = max(int((stop - origin) / span * width), b + 1)
        bar = " " * a + "·" * (b - a) + "█" * (c - b)
        lines.append(f"{step.id:<{name_w}}  |{bar:<{width}}|  queued {_secs(start - previous)}"
                     f", ran {_secs(stop - start)}")
        previous = stop
    return "\n".join(lines)


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
    node = build_tree(fo, run_id, depth=depth)
    if node is None:
        raise click.ClickException(f"no run {run_id} (unknown or expired)")
    if as_json:
        click.echo(json.dumps(node.as_dict(), default=str, indent=2))
        return
    _describe(node)


def _describe(node: RunNode) -> None:
    r = node.run
    click.echo(click.style(f"run {r.id}", bold=True) + f"  {r.function_id}  " + _status(r.status))
    for event in r.events[:3]:
        click.echo(f"  trigger   {event['name']}  {event['id']}  "
                   f"{json.dumps(event.get('data', {}))[:80]}")
    if r.parent_run_id:
        click.echo(f"  parent    {r.parent_run_id}  step {r.parent_step_id or '-'}")
    click.echo(f"  created   {_ago(r.created_at)}   started {_ago(r.started_at)}   "
               f"ended {_ago(r.ended_at)}")
    if r.wake_at and not r.finished:
        click.echo(f"  parked until {_ago(r.wake_at)} ({r.status})")
    for step in r.steps:
        if step.status in ("sleeping", "waiting", "invoking", "retrying"):
            d = step.detail
            what = {"sleeping": f"wakes at {d.get('wake_at')}",
                    "waiting": f"waits for {d.get('event')} until {d.get('timeout_at')}",
                    "invoking": f"awaits child run {d.get('child_run_id')}",
                    "retrying": f"retries at {d.get('retry_at')}"}[step.status]
            click.echo(f"  step {step.id} {what}")
    if r.error:
        click.echo(click.style(f"  error     {r.error.get('type')}: {r.error.get('message')}",
                               fg="red"))
    click.echo("")
    click.echo(format_tree(node))
    click.echo("")
    click.echo(waterfall(r))


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
    for event, run_ids in list_events(fo, name=name, since_ms=_when(since), limit=limit):
        when = datetime.fromtimestamp(event.get("ts", 0) / 1000, tz=UTC)
        rows.append([event["id"], event["name"], _ago(when), str(len(run_ids)),
                     ", ".join(rid[:12] for rid in run_ids[:4])])
    _table(rows, ["EVENT", "NAME", "TIME (UTC)", "RUNS", "RUN IDS"])


@fanout.command(name="replay")
@click.argument("event_id", required=False)
@click.option("--name", help="replay every stored event of this name (with --since)")
@click.option("--since", help="with --name: stored after (ISO time or a duration ago)")
@click.pass_context
def replay_cmd(ctx: click.Context, event_id: str | None, name: str | None,
               since: str | None) -> None:
    """Send stored events again as new events, so every subscriber runs again.

    \b
    Examples:
        celery -A proj fanout replay 01a21ed8ef3a762debe89ddf49838b71
        celery -A proj fanout replay --name app/order.created --since 2h
    """
    fo = _fanout(ctx)
    if event_id:
        event = fo.store.get_event(event_id)
        if event is None:
            raise click.ClickException(f"no stored event {event_id}")
        chosen = [event]
    elif name:
        chosen = [e for e, _ in list_events(fo, name=name, since_ms=_when(since),
                                            limit=100_000)]
        chosen.reverse()  # oldest first, as they were sent
    else:
        raise click.UsageError("give an EVENT_ID or --name")
    try:
        for new_id in replay(fo, chosen):
            click.echo(new_id)
    except FanoutError as exc:  # e.g. a fanout/ event (invoke, cron): rerun its run instead
        _fail(exc)


@fanout.command(name="rerun")
@click.argument("run_id")
@click.option("--from-step", help="re-execute from this step on (default: the first step "
              "that did not complete)")
@click.pass_context
def rerun_cmd(ctx: click.Context, run_id: str, from_step: str | None) -> None:
    """Start a new run of the same function and event, reusing the recorded outputs of
    the steps before --from-step.

    \b
    Example:
        celery -A proj fanout rerun 1f3a9c0e5b7d4e21a8c6f0b2d4e6a8c0 --from-step email-user
    """
    fo = _fanout(ctx)
    try:
        click.echo(rerun(fo, run_id, from_step))
    except FanoutError as exc:
        _fail(exc)


@fanout.command(name="cancel")
@click.argument("run_id", required=False)
@click.option("--function", "function_id", help="cancel this function's runs (with --since)")
@click.option("--since", help="with --function: runs created after this")
@click.pass_context
def cancel_cmd(ctx: click.Context, run_id: str | None, function_id: str | None,
               since: str | None) -> None:
    """Cancel a run, or a function's runs created since a time.

    \b
    Examples:
        celery -A proj fanout cancel 1f3a9c0e5b7d4e21a8c6f0b2d4e6a8c0
        celery -A proj fanout cancel --function weekly-activity-send-email --since 30m
    """
    fo = _fanout(ctx)
    try:
        if run_id:
            outcome = fo.cancel(run_id, "cancelled from the command line")
            if outcome == "missing":
                raise click.ClickException(f"no run {run_id} (unknown or expired)")
            click.echo(f"{run_id}: {outcome}")
        elif function_id:
            since_ms = _when(since)
            after = None if since_ms is None else datetime.fromtimestamp(since_ms / 1000,
                                                                         tz=UTC)
            click.echo(f"cancelled {fo.cancel_runs(function_id, started_after=after)} run(s)")
        else:
            raise click.UsageError("give a RUN_ID or --function")
    except FanoutError as exc:
        _fail(exc)


def main() -> None:  # pragma: no cover - `python -m fanout_celery.cli` for debugging
    fanout(standalone_mode=True)
    sys.exit(0)
