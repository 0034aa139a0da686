"""The run tree: a run, its steps, and the runs its events started, recursively."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .events import derived_id
from .runs import Run, StepRecord

if TYPE_CHECKING:
    from .fanout import Fanout


@dataclass
class RunNode:
    """A run with the child runs started by its ``send_event`` steps."""

    run: Run
    children: dict[str, list[RunNode]] = field(default_factory=dict)  # step id -> runs

    def walk(self) -> list[Run]:
        out = [self.run]
        for kids in self.children.values():
            for kid in kids:
                out += kid.walk()
        return out

    def as_dict(self) -> dict[str, Any]:
        run = self.run
        return {
            "id": run.id, "function_id": run.function_id, "status": run.status,
            "attempt": run.attempt, "output": run.output, "error": run.error,
            "event_ids": run.event_ids, "parent_run_id": run.parent_run_id,
            "parent_step_id": run.parent_step_id, "duration": run.duration,
            "steps": [_step_dict(s) for s in run.steps],
            "children": {k: [c.as_dict() for c in v] for k, v in self.children.items()},
        }


def _step_dict(step: StepRecord) -> dict[str, Any]:
    return {"id": step.id, "status": step.status, "attempts": step.attempts,
            "output": step.output, "error": step.error, "duration": step.duration}


def child_event_ids(run: Run) -> dict[str, list[str]]:
    """Event ids sent by each ``send_event`` step of the run."""
    return {s.id: list(s.output or []) for s in run.steps
            if s.kind == "send_event" and s.status == "completed"}


def child_run_ids(run: Run) -> dict[str, list[str]]:
    """Runs started directly by ``invoke`` and ``parallel`` steps of the run."""
    out: dict[str, list[str]] = {}
    for s in run.steps:
        if s.kind == "invoke" and s.detail.get("child_run_id"):
            out[s.id] = [s.detail["child_run_id"]]
        elif s.kind == "parallel":
            # Every branch run exists from the start, joined or not.
            n = int(s.detail.get("branches", 0))
            out[s.id] = [derived_id(run.id, s.id, str(i)) for i in range(n)]
    return out


def build_tree(fanout: Fanout, run_id: str, depth: int = 3) -> RunNode | None:
    """Load a run and, up to ``depth`` levels, the runs started by its events.

    Each level is loaded in two pipelined round trips, however wide it is.
    """
    root = fanout.get_run(run_id)
    if root is None:
        return None
    top = RunNode(root)
    level = [top]
    for _ in range(depth):
        wanted: list[tuple[RunNode, str, str]] = [
            (node, step_id, eid)
            for node in level for step_id, eids in child_event_ids(node.run).items()
            for eid in eids
        ]
        run_ids = fanout.store.runs_for_events([eid for _, _, eid in wanted])
        pairs = [(node, step_id, rid) for (node, step_id, _), rids in zip(wanted, run_ids,
                                                                          strict=True)
                 for rid in rids]
        pairs += [(node, step_id, rid) for node in level
                  for step_id, rids in child_run_ids(node.run).items() for rid in rids]
        if not pairs:
            break
        loaded = fanout.store.load_runs([rid for _, _, rid in pairs])
        level = []
        for (node, step_id, rid), (raw, steps) in zip(pairs, loaded, strict=True):
            run = Run.from_store(rid, raw, steps)
            if run is None or run.parent_run_id != node.run.id:
                continue
            kid = RunNode(run)
            node.children.setdefault(step_id, []).append(kid)
            level.append(kid)
    return top


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _line(run: Run) -> str:
    label = f"{run.function_id}  {run.id[:12]}  {run.status}"
    extra = [f"duration {_secs(run.duration)}"]
    if run.attempt:
        extra.append(f"handler retries {run.attempt}")
    if run.error:
        extra.append(f"error {run.error.get('type')}: {run.error.get('message')}")
    return f"{label}  ({', '.join(extra)})"


def format_tree(node: RunNode, indent: str = "") -> str:
    """A readable text tree: run, its steps (status, attempts, duration), child runs."""
    lines = [indent + _line(node.run)]
    steps = node.run.steps
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        branch, cont = ("└─ ", "   ") if last else ("├─ ", "│  ")
        note = f"{step.status}, {step.attempts} attempt{'s' if step.attempts != 1 else ''}, " \
               f"{_secs(step.duration)}"
        if step.error and step.status != "completed":
            note += f", {step.error.get('type')}: {step.error.get('message')}"
        lines.append(f"{indent}{branch}step {step.id}  [{note}]")
        for kid in node.children.get(step.id, []):
            lines.append(format_tree(kid, indent + cont + "   "))
    return "\n".join(lines)
