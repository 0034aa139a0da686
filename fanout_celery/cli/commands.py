"""``celery fanout ...``: see and operate runs from the ``celery`` command.

Installed through the ``celery.commands`` entry point, so it works against the app given
with ``celery -A proj``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from ..errors import FanoutError
from ..fanout import Fanout, fanout_for
from ..model.durations import parse_duration
from ..model.events import now_ms
from ..model.runs import STATUSES
from ..store.redis import is_transient
from .render import ago, describe, secs, styled, table


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


def _when(text: str | None) -> datetime | None:
    """An ISO time, or a duration back from now ("10m", "2h", "7d")."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when
    except ValueError:
        pass
    try:
        back = parse_duration(text, "--since/--until")
        return datetime.fromtimestamp(now_ms() / 1000 - back, tz=UTC)
    except FanoutError as exc:
        raise click.BadParameter(f"{text!r}: use an ISO time or a duration like 10m, 2h, "
                                 f"7d ({exc})") from None


def _fail(exc: FanoutError) -> None:
    raise click.ClickException(str(exc))


class _Group(click.Group):
    """Every command's errors as one line: a store or broker that cannot be reached is
    ``Error: cannot reach ...``, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except FanoutError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, OSError) or \
                    type(exc).__module__.startswith(("kombu", "amqp", "redis")):
                raise click.ClickException(
                    f"cannot reach Redis or the broker ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); is it running, and is the URL right?") from None
            raise


def _confirmed(question: str) -> bool:
    """Asked on the terminal; no answer (no terminal, end of input) is no."""
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        return False


def _run_id(fo: Fanout, text: str) -> str:
    """A run id, or the prefix of one (the 12 characters tables and trees print)."""
    try:
        return fo.find_run_id(text)
    except FanoutError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(name="fanout", cls=_Group)
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
    for fid, sub in sorted(fo.engine.router.all().items()):
        local = fo.functions.get(fid)
        retries = str(local.definition.retry_policy.max_retries) if local else "?"
        triggers = ", ".join([*sub.events, *(f"cron {c}" for c in sub.crons)])
        rows.append([fid, triggers or "(invoke only)", retries, sub.queue or "(default)",
                     ", ".join(nexts.get(fid, [])) or "-"])
    table(rows, ["FUNCTION", "TRIGGERS", "RETRIES", "QUEUE", "NEXT CRON"])


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
    try:
        result = fo.list_runs(function=function_id, status=status, since=_when(since),
                              until=_when(until), event_id=event_id, limit=limit,
                              offset=(page - 1) * limit)
    except FanoutError as exc:
        _fail(exc)
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


@fanout.command(name="replay")
@click.argument("event_id", required=False)
@click.option("--name", help="replay every stored event of this name (with --since)")
@click.option("--since", help="with --name: stored after (ISO time or a duration ago)")
@click.option("--yes", is_flag=True, help="with --name and no --since: replay every stored "
              "event of that name without asking")
@click.pass_context
def replay_cmd(ctx: click.Context, event_id: str | None, name: str | None,
               since: str | None, yes: bool) -> None:
    """Send stored events again as new events, so every subscriber runs again.

    \b
    Examples:
        celery -A proj fanout replay 01a21ed8ef3a762debe89ddf49838b71
        celery -A proj fanout replay --name app/order.created --since 2h
    """
    fo = _fanout(ctx)
    if event_id:
        event = fo.get_event(event_id)
        if event is None:
            raise click.ClickException(f"no stored event {event_id}")
        chosen = [event]
    elif name:
        chosen = [e for e, _ in fo.list_events(name=name, since=_when(since),
                                            limit=100_000)]
        chosen.reverse()  # oldest first, as they were sent
        if since is None and chosen and not yes and not _confirmed(
                f"replay all {len(chosen)} stored events named {name!r} (every subscriber "
                "runs again)?"):
            raise click.ClickException(
                f"{len(chosen)} events named {name!r} are stored: narrow them with --since, "
                "or pass --yes to replay them all")
    else:
        raise click.UsageError("give an EVENT_ID or --name")
    try:
        for new_id in fo.replay(chosen):
            click.echo(new_id)
    except FanoutError as exc:  # e.g. a fanout/ event (invoke, cron): rerun its run instead
        _fail(exc)


@fanout.command(name="rerun")
@click.argument("run_id", required=False)
@click.option("--from-step", help="re-execute from this step on (default: the first step "
              "that did not complete)")
@click.option("--failed", "function_id", metavar="FUNCTION",
              help="rerun every failed run of this function (with --since), each from the "
                   "step that failed")
@click.option("--since", help="with --failed: runs created after this")
@click.option("--dry-run", is_flag=True, help="with --failed: count and list, start nothing")
@click.pass_context
def rerun_cmd(ctx: click.Context, run_id: str | None, from_step: str | None,
              function_id: str | None, since: str | None, dry_run: bool) -> None:
    """Start a new run of the same function and event, reusing the recorded outputs of
    the steps before --from-step; or rerun a function's failed runs in bulk.

    \b
    Examples:
        celery -A proj fanout rerun 1f3a9c0e5b7d4e21a8c6f0b2d4e6a8c0 --from-step email-user
        celery -A proj fanout rerun --failed send-email --since 2h --dry-run
    """
    fo = _fanout(ctx)
    try:
        if run_id:
            click.echo(fo.rerun(_run_id(fo, run_id), from_step))
        elif function_id:
            chosen = fo.rerun_failed(function_id, since=_when(since), dry_run=True)
            if dry_run:
                click.echo(f"{len(chosen)} failed run(s) of {function_id} would be rerun")
                for rid in chosen:
                    click.echo(rid)
                return
            for new_id in fo.rerun_failed(function_id, since=_when(since)):
                click.echo(new_id)
        else:
            raise click.UsageError("give a RUN_ID or --failed FUNCTION")
    except FanoutError as exc:
        _fail(exc)


@fanout.command(name="cancel")
@click.argument("run_id", required=False)
@click.option("--function", "function_id", help="cancel this function's runs (with --since)")
@click.option("--since", help="with --function: runs created after this")
@click.option("--dry-run", is_flag=True, help="with --function: count, cancel nothing")
@click.pass_context
def cancel_cmd(ctx: click.Context, run_id: str | None, function_id: str | None,
               since: str | None, dry_run: bool) -> None:
    """Cancel a run, or a function's runs created since a time.

    \b
    Examples:
        celery -A proj fanout cancel 1f3a9c0e5b7d4e21a8c6f0b2d4e6a8c0
        celery -A proj fanout cancel --function weekly-activity-send-email --since 30m
    """
    fo = _fanout(ctx)
    try:
        if run_id:
            run_id = _run_id(fo, run_id)
            outcome = fo.cancel(run_id, "cancelled from the command line")
            if outcome == "missing":
                raise click.ClickException(f"no run {run_id} (unknown or expired)")
            click.echo(f"{run_id}: {outcome}")
        elif function_id:
            after = _when(since)
            if dry_run:
                active = [r for r in fo.list_runs(function=function_id, since=after,
                                                  limit=100_000).runs if not r.finished]
                click.echo(f"{len(active)} run(s) of {function_id} in flight would be "
                           "cancelled")
                return
            click.echo(f"cancelled {fo.cancel_runs(function_id, started_after=after)} run(s)")
        else:
            raise click.UsageError("give a RUN_ID or --function")
    except FanoutError as exc:
        _fail(exc)


@fanout.command()
@click.option("--address", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface; give credentials then)")
@click.option("--port", default=5556, show_default=True, type=click.IntRange(1, 65535))
@click.option("--basic-auth", help="user:password required for every page (Flower's option)")
@click.option("--token", help="a bearer token required for every page (or ?token=...)")
@click.option("--read-only", is_flag=True, help="pages only: no cancel, rerun or replay")
@click.pass_context
def dashboard(ctx: click.Context, address: str, port: int, basic_auth: str | None,
              token: str | None, read_only: bool) -> None:
    """Serve the dashboard: runs, a run's waterfall, events, functions, /metrics."""
    try:
        import uvicorn

        from ..dashboard import DashboardConfig, app
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'fanout_celery[dashboard]' ({exc})") \
            from None
    if address not in ("127.0.0.1", "localhost", "::1") and not (basic_auth or token):
        click.echo(f"warning: serving on {address} without --basic-auth or --token: anyone "
                   "who reaches it can cancel and rerun runs", err=True)
    try:
        config = DashboardConfig(basic_auth=basic_auth, token=token, read_only=read_only)
    except FanoutError as exc:
        _fail(exc)
    application = app(_fanout(ctx), config)
    click.echo(f"fanout dashboard on http://{address}:{port}/"
               + (" (read-only)" if read_only else ""))
    uvicorn.run(application, host=address, port=port, log_level="warning")
