"""What the pages show: runs, a run's waterfall, events, functions, read through the
facade. No web framework here: plain data for the templates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import FanoutError
from ..fanout import Fanout
from ..model.records import FINAL
from ..model.runs import Run, RunNode

PAGE = 50


def ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def human(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min"


@dataclass
class Bar:
    """One row of a run's waterfall: where it starts and how long it lasts, in % of the
    run's time line; ``kind`` styles it (run, wait, queue, child)."""

    label: str
    status: str
    left: float
    width: float
    kind: str
    note: str
    href: str = ""


def waterfall(node: RunNode) -> tuple[list[Bar], str]:
    """The run's steps and child runs on one time line (queue time before the start, then
    each step; sleeps and waits drawn as waiting). Steps a rerun reused keep their
    original times, before the run was created: they are drawn at the start, marked."""
    run = node.run
    start = ms(run.created_at) or 0
    now = int(datetime.now(UTC).timestamp() * 1000)
    end = ms(run.ended_at) or now
    points = [end]
    children = [kid.run for kids in node.children.values() for kid in kids]
    for kid in children:
        points.append(ms(kid.ended_at) or now)
    span = max(1, max(points) - start)

    def place(a: int | None, b: int | None) -> tuple[float, float]:
        a = max(start, a or start)
        b = max(a, b or now)
        return (100 * (a - start) / span, max(0.4, 100 * (b - a) / span))

    bars = []
    first = ms(run.started_at)
    if first is not None:
        left, width = place(start, first)
        bars.append(Bar("queued", "queued", left, width, "queue", seconds((first - start) / 1000)))
    for step in run.steps:
        a, b = ms(step.started_at), ms(step.ended_at)
        reused = step.reused or (a is not None and a < start)
        left, width = (0.0, 0.4) if reused else place(a, b if b else None)
        kind = "wait" if step.kind in ("sleep", "wait_for_event", "invoke", "parallel") \
            else "run"
        note = "reused from the run it reruns" if reused else seconds(
            None if a is None or b is None else (b - a) / 1000)
        bars.append(Bar(step.id, step.status, left, width, kind, note))
    for kid in children:
        left, width = place(ms(kid.created_at), ms(kid.ended_at))
        bars.append(Bar(f"{kid.function_id} {kid.id[:12]}", kid.status, left, width, "child",
                        seconds(kid.duration), href=f"runs/{kid.id}"))
    return bars, seconds(span / 1000)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def earlier(error: dict[str, Any]) -> dict[str, Any]:
    """One earlier failed attempt of a step, as the run page shows it."""
    started = error.get("started_at")
    when = human(datetime.fromtimestamp(int(started) / 1000, tz=UTC)) + " UTC" \
        if started else ""
    return {**error, "when": when}


def run_view(fanout: Fanout, run_id: str) -> dict[str, Any] | None:
    """Everything the run page shows."""
    try:
        run_id = fanout.find_run_id(run_id)
    except FanoutError:
        return None
    node = fanout.run_tree(run_id, depth=1)
    if node is None:
        return None
    run = node.run
    bars, span = waterfall(node)
    parked = []
    if run.wake_at is not None and run.status not in FINAL:
        parked.append(f"wakes at {human(run.wake_at)} UTC")
    for step in run.steps:
        for key in ("wake_at", "timeout_at", "retry_at"):
            if key in step.detail and step.status not in ("completed", "failed"):
                when = datetime.fromtimestamp(int(step.detail[key]) / 1000, tz=UTC)
                parked.append(f"step {step.id}: {key.replace('_at', '')} at {human(when)} UTC")
    return {"run": run, "bars": bars, "span": span, "parked": parked,
            "events": [pretty(e) for e in run.events], "output": pretty(run.output),
            "error": pretty(run.error) if run.error else "",
            "steps": [{"step": s, "output": pretty(s.output), "duration": seconds(s.duration),
                       "error": pretty(s.error) if s.error else "",
                       "earlier": [earlier(e) for e in s.earlier_errors]} for s in run.steps],
            "active": run.status not in FINAL, "human": human}


# A filter that the store cannot apply (event name, parent, text) is applied to the runs
# read: at most this many are read for one page or one bulk action.
SCAN = 5000
# A bulk action applies to at most this many runs at a time.
BULK = 1000


@dataclass(frozen=True)
class RunFilter:
    """The runs list's filters. The store selects by function, status, time range and
    event id; the event name, the parent run and the text are matched on what it reads."""

    function: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    event_id: str | None = None
    event_name: str | None = None
    parent: str | None = None
    search: str | None = None

    def keeps(self, run: Run) -> bool:
        """Whether a run read from the store passes the filters the store did not apply
        (branch runs of a parallel group never: they are shown in their parent)."""
        if run.branch_of is not None:
            return False
        if self.event_name and not any(e.get("name") == self.event_name for e in run.events):
            return False
        if self.parent and run.parent_run_id != self.parent:
            return False
        if self.search:
            needle = self.search.lower()
            return needle in run.id or needle in json.dumps(run.events).lower() \
                or needle in json.dumps(run.error or {}).lower()
        return True


def matching(fanout: Fanout, f: RunFilter, limit: int, offset: int = 0,
             ) -> tuple[list[Run], bool]:
    """Runs passing ``f``, newest first: ``limit`` of them after skipping ``offset``, and
    whether there are more. Reads at most ``SCAN`` runs from the store."""
    kept: list[Run] = []
    read, batch = 0, 200
    while len(kept) < offset + limit + 1 and read < SCAN:
        # Each read pages from the newest run again: doubling the batch keeps the ids read
        # again within about as many as there are (5 reads for a whole scan, not 25).
        found = fanout.list_runs(function=f.function, status=f.status, since=f.since,
                                 until=f.until, event_id=f.event_id,
                                 limit=min(batch, SCAN - read), offset=read)
        read += len(found.runs)
        kept += [r for r in found.runs if f.keeps(r)]
        if not found.more:
            break
        batch *= 2
    return kept[offset:offset + limit], len(kept) > offset + limit or read >= SCAN


def runs_view(fanout: Fanout, f: RunFilter, page: int) -> dict[str, Any]:
    """A page of runs, newest first, filtered."""
    runs, more = matching(fanout, f, PAGE, (page - 1) * PAGE)
    return {"runs": runs, "more": more, "page": page, "seconds": seconds, "human": human}


def bulk_targets(fanout: Fanout, f: RunFilter, action: str) -> tuple[list[Run], bool]:
    """The runs a bulk action applies to: those passing ``f`` that are still active
    (cancel) or finished (rerun), at most ``BULK``; and whether more matched."""
    runs, more = matching(fanout, f, SCAN)
    wanted = [r for r in runs if (r.status not in FINAL) == (action == "cancel")]
    return wanted[:BULK], more or len(wanted) > BULK


def functions_view(fanout: Fanout) -> list[dict[str, Any]]:
    """Each function: triggers, flow control, next cron time, counts by status in the
    last hour and day."""
    now = datetime.now(UTC)
    schedules = {s["function_id"]: s for s in fanout.schedules(1)}
    paused = fanout.paused()
    out = []
    for fid, sub in sorted(fanout.engine.router.all().items()):
        counts: dict[str, dict[str, int]] = {"hour": {}, "day": {}}
        page = fanout.list_runs(function=fid, since=datetime.fromtimestamp(
            now.timestamp() - 86400, tz=UTC), limit=1000)
        for run in page.runs:
            age = (now - run.created_at).total_seconds() if run.created_at else 0
            for window, limit in (("hour", 3600), ("day", 86400)):
                if age <= limit:
                    counts[window][run.status] = counts[window].get(run.status, 0) + 1
        next_fire = schedules.get(fid, {}).get("next", [None])
        out.append({"id": fid, "events": list(sub.events), "crons": list(sub.crons),
                    "paused": paused.get(fid),
                    "flow": sub.flow or {}, "next": next_fire[0] if next_fire else None,
                    "counts": counts, "capped": page.more})
    return out
