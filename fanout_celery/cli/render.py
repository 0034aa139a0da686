"""How the CLI draws runs: tables, the run tree and the waterfall of steps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from ..model.runs import Run, RunNode

STATUS_COLOURS = {"completed": "green", "failed": "red", "cancelled": "magenta",
                  "running": "cyan", "sleeping": "blue", "waiting": "blue", "queued": "yellow"}


def ago(dt: datetime | None) -> str:
    return "-" if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def styled(name: str) -> str:
    return click.style(name, fg=STATUS_COLOURS.get(name))


def secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def table(rows: list[list[str]], header: list[str]) -> None:
    plain = [header, *rows]
    widths = [max(len(click.unstyle(r[i])) for r in plain) for i in range(len(header))]
    for n, row in enumerate(plain):
        cells = [c + " " * (w - len(click.unstyle(c))) for c, w in zip(row, widths, strict=True)]
        line = "  ".join(cells).rstrip()
        click.echo(click.style(line, bold=True) if n == 0 else line)


WAITING_KINDS = ("sleep", "wait_for_event", "invoke", "parallel")


def waterfall(run: Run, width: int = 40) -> str:
    """Per step, on the run's time line (from its creation to its end): time before the
    step started (·), the step executing (█) or waiting (░: a sleep, a wait, an invoke).
    Steps a rerun reused keep the times of the run they come from: marked, not drawn.
    Overlapping steps (parallel branches) are drawn where they ran."""
    if run.created_at is None or not run.steps:
        return "(no steps)"
    origin = run.created_at.timestamp()
    end = (run.ended_at or datetime.now(UTC)).timestamp()
    span = max(end - origin, 1e-3)

    def col(t: float) -> int:
        return min(width, max(0, int((t - origin) / span * width)))

    lines = []
    previous = origin
    name_w = max(len(s.id) for s in run.steps)
    for step in run.steps:
        if step.started_at is not None and step.started_at.timestamp() < origin - 1e-3:
            lines.append(f"{step.id:<{name_w}}  |{'':<{width}}|  reused from run "
                         f"{run.rerun_of or '?'}")
            continue
        start = step.started_at.timestamp() if step.started_at else previous
        stop = step.ended_at.timestamp() if step.ended_at else end
        a = col(min(previous, start))
        b = min(col(start), width - 1)  # a step at the very end still gets its column
        c = max(col(stop), b + 1)
        mark = "░" if step.kind in WAITING_KINDS else "█"
        bar = (" " * a + "·" * (b - a) + mark * (c - b))[:width]
        queued = max(0.0, start - previous)
        lines.append(f"{step.id:<{name_w}}  |{bar:<{width}}|  queued {secs(queued)}, "
                     f"{'waited' if mark == '░' else 'ran'} {secs(max(0.0, stop - start))}")
        previous = max(previous, stop)
    return "\n".join(lines)


def _at(ms: object) -> str:
    """Epoch milliseconds as a UTC time."""
    try:
        return ago(datetime.fromtimestamp(int(str(ms)) / 1000, tz=UTC)) + " UTC"
    except (TypeError, ValueError):
        return "-"


def describe(node: RunNode) -> None:
    """Print a run: trigger, parent, times, parked steps, error, tree and waterfall."""
    r = node.run
    click.echo(click.style(f"run {r.id}", bold=True) + f"  {r.function_id}  " + styled(r.status))
    for event in r.events[:3]:
        click.echo(f"  trigger   {event['name']}  {event['id']}  "
                   f"{json.dumps(event.get('data', {}))[:80]}")
    if r.parent_run_id:
        click.echo(f"  parent    {r.parent_run_id}  step {r.parent_step_id or '-'}")
    if r.rerun_of:
        click.echo(f"  rerun of  {r.rerun_of}"
                   + (f"  from step {r.rerun_from}" if r.rerun_from else ""))
    click.echo(f"  created   {ago(r.created_at)}   started {ago(r.started_at)}   "
               f"ended {ago(r.ended_at)}")
    if r.wake_at and not r.finished:
        click.echo(f"  parked until {ago(r.wake_at)} UTC ({r.status})")
    for step in r.steps if not r.finished else []:
        if step.status in ("sleeping", "waiting", "invoking", "retrying"):
            d = step.detail
            what = {"sleeping": f"wakes at {_at(d.get('wake_at'))}",
                    "waiting": f"waits for {d.get('event')} until {_at(d.get('timeout_at'))}",
                    "invoking": f"awaits child run {d.get('child_run_id')}",
                    "retrying": f"retries at {_at(d.get('retry_at'))}"}[step.status]
            click.echo(f"  step {step.id} {what}")
    if r.error:
        click.echo(click.style(f"  error     {r.error.get('type')}: {r.error.get('message')}",
                               fg="red"))
    click.echo("")
    click.echo(node.format())
    click.echo("")
    click.echo(waterfall(r))
