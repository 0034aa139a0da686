"""``celery fanout`` commands that operate: replay, rerun, cancel, pause, resume, the
dashboard."""

from __future__ import annotations

import click

from .group import _confirmed, _fanout, _run_id, _when, fanout


@fanout.command()
@click.argument("function_id")
@click.option("--skip", is_flag=True, help="skip the runs that would start meanwhile "
              "(default: hold them for the resume)")
@click.pass_context
def pause(ctx: click.Context, function_id: str, skip: bool) -> None:
    """Pause a function: no run of it starts, runs under way stop at their next step.

    \b
    Example:
        celery -A proj fanout pause weekly-activity-send-email
    """
    fo = _fanout(ctx)
    fo.pause(function_id, "skip" if skip else "hold")
    click.echo(f"{function_id}: paused ({'skip' if skip else 'hold'})")


@fanout.command()
@click.argument("function_id")
@click.pass_context
def resume(ctx: click.Context, function_id: str) -> None:
    """Resume a paused function; its held runs go on from where they stopped."""
    fo = _fanout(ctx)
    click.echo(f"{function_id}: resumed, {fo.resume(function_id)} held run(s) published")


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
    for new_id in fo.replay(chosen):
        click.echo(new_id)


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
    config = DashboardConfig(basic_auth=basic_auth, token=token, read_only=read_only)
    application = app(_fanout(ctx), config)
    click.echo(f"fanout dashboard on http://{address}:{port}/"
               + (" (read-only)" if read_only else ""))
    uvicorn.run(application, host=address, port=port, log_level="warning")
