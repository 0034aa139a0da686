"""How the CLI draws runs (with ``rich``): tables, the run tree and the waterfall of steps.

On a terminal, rich fits them to its width and colours statuses. Piped or redirected,
rows are as wide as their content (nothing is cut or wrapped, so ``grep`` and ``awk``
see whole ids) and there are no colour codes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..model.runs import Run, RunNode, run_label, step_label

STATUS_COLOURS = {"completed": "green", "failed": "red", "cancelled": "magenta",
                  "running": "cyan", "sleeping": "blue", "waiting": "blue", "queued": "yellow",
                  "paused": "yellow", "skipped": "magenta"}
# The width of a pipe or a file: wide enough that no row is ever cut.
UNBOUNDED = 10_000


def console() -> Console:
    """stdout as the CLI draws on it (looked up at each call: click's test runner swaps
    it per command)."""
    terminal = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if terminal else UNBOUNDED,
                   no_color=not terminal, highlight=False, markup=False, emoji=False,
                   soft_wrap=not terminal)


def ago(dt: datetime | None) -> str:
    return "-" if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def styled(name: str) -> Text:
    """A status, in its colour."""
    return Text(name, style=STATUS_COLOURS.get(name, ""))


def secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _plain_table(*header: str) -> Table:
    """Columns two spaces apart, left-aligned, no borders: easy to read and to cut."""
    grid = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1),
                 header_style="bold")
    for name in header:
        grid.add_column(name, overflow="fold")
    return grid


def table(rows: Sequence[Sequence[str | Text]], header: list[str]) -> None:
    """Print ``rows`` under ``header``."""
    grid = _plain_table(*header)
    for row in rows:
        grid.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    console().print(grid)


WAITING_KINDS = ("sleep", "wait_for_event", "invoke", "parallel")


def waterfall(run: Run, width: int = 40) -> Table | Text:
    """Per step, on the run's time line (from its creation to its end): time before the
    step started (·), the step executing (█) or waiting (░: a sleep, a wait, an invoke).
    Steps a rerun reused keep the times of the run they come from: marked, not drawn.
    Overlapping steps (parallel branches) are drawn where they ran."""
    if run.created_at is None or not run.steps:
        return Text("(no steps)")
    origin = run.created_at.timestamp()
    end = (run.ended_at or datetime.now(UTC)).timestamp()
    span = max(end - origin, 1e-3)

    def col(t: float) -> int:
        return min(width, max(0, int((t - origin) / span * width)))

    grid = Table(box=None, pad_edge=False, show_edge=False, show_header=False,
                 padding=(0, 1))
    grid.add_column("step", no_wrap=True)
    grid.add_column("time line", no_wrap=True, min_width=width + 2)
    grid.add_column("timing", overflow="fold")
    previous = origin
    for step in run.steps:
        # Reruns before the mark: a step that started before the run was created.
        if step.reused or (step.started_at is not None
                           and step.started_at.timestamp() < origin - 1e-3):
            grid.add_row(step.id, f"|{'':<{width}}|", f"reused from run {run.rerun_of or '?'}")
            continue
        start = step.started_at.timestamp() if step.started_at else previous
        stop = step.ended_at.timestamp() if step.ended_at else end
        a = col(min(previous, start))
        b = min(col(start), width - 1)  # a step at the very end still gets its column
        c = max(col(stop), b + 1)
        mark = "░" if step.kind in WAITING_KINDS else "█"
        bar = (" " * a + "·" * (b - a) + mark * (c - b))[:width]
        queued = max(0.0, start - previous)
        grid.add_row(step.id, Text(f"|{bar:<{width}}|", style=STATUS_COLOURS.get(step.status, "")),
                     f"queued {secs(queued)}, {'waited' if mark == '░' else 'ran'} "
                     f"{secs(max(0.0, stop - start))}")
        previous = max(previous, stop)
    return grid


def tree(node: RunNode) -> Tree:
    """The run, its steps, and under each step the child runs it started."""
    top = Tree(Text(run_label(node.run), style=STATUS_COLOURS.get(node.run.status, "")),
               guide_style="dim")
    for step in node.run.steps:
        branch = top.add(Text(step_label(node.run, step)))
        for kid in node.children.get(step.id, []):
            branch.add(tree(kid))
    return top


def _at(ms: object) -> str:
    """Epoch milliseconds as a UTC time."""
    try:
        return ago(datetime.fromtimestamp(int(str(ms)) / 1000, tz=UTC)) + " UTC"
    except (TypeError, ValueError):
        return "-"


def _facts(node: RunNode) -> list[Text]:
    """The run's header lines, under its title."""
    r = node.run
    lines = [f"  trigger   {event['name']}  {event['id']}  "
             f"{json.dumps(event.get('data', {}))[:80]}" for event in r.events[:3]]
    if r.parent_run_id:
        lines.append(f"  parent    {r.parent_run_id}  step {r.parent_step_id or '-'}")
    if r.rerun_of:
        lines.append(f"  rerun of  {r.rerun_of}"
                     + (f"  from step {r.rerun_from}" if r.rerun_from else ""))
    lines.append(f"  created   {ago(r.created_at)}   started {ago(r.started_at)}   "
                 f"ended {ago(r.ended_at)}")
    if r.wake_at and not r.finished:
        lines.append(f"  parked until {ago(r.wake_at)} UTC ({r.status})")
    for step in r.steps if not r.finished else []:
        if step.status in ("sleeping", "waiting", "invoking", "retrying"):
            d = step.detail
            what = {"sleeping": f"wakes at {_at(d.get('wake_at'))}",
                    "waiting": f"waits for {d.get('event')} until {_at(d.get('timeout_at'))}",
                    "invoking": f"awaits child run {d.get('child_run_id')}",
                    "retrying": f"retries at {_at(d.get('retry_at'))}"}[step.status]
            lines.append(f"  step {step.id} {what}")
    for step in r.steps:
        for earlier in step.earlier_errors:
            lines.append(f"  step {step.id} attempt {earlier.get('attempt')} failed at "
                         f"{_at(earlier.get('ended_at'))}: {earlier.get('type')}: "
                         f"{str(earlier.get('message', ''))[:200]}")
    out = [Text(line) for line in lines]
    if r.error:
        out.append(Text(f"  error     {r.error.get('type')}: {r.error.get('message')}",
                        style="red"))
    return out


def describe(node: RunNode) -> None:
    """Print a run: trigger, parent, times, parked steps, earlier failed attempts, error,
    the tree of steps and child runs, and the waterfall."""
    r = node.run
    out = console()
    title = Text(f"run {r.id}", style="bold")
    title.append(f"  {r.function_id}  ")
    title.append_text(styled(r.status))
    out.print(title)
    for line in _facts(node):
        out.print(line)
    out.print()
    out.print(tree(node))
    out.print()
    out.print(waterfall(r))
