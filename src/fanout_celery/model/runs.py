"""Runs and their steps, as read back from the store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .records import FINAL, STATUSES, unpack_step

__all__ = ["FINAL", "STATUSES", "Run", "RunNode", "StepRecord"]


def _time(ms: str | None) -> datetime | None:
    return None if not ms else datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


# The kind-specific fields of a step record, shown as its detail.
_DETAIL = ("wake_at", "event", "timeout_at", "child_run_id", "function_id", "retry_at",
           "branches")


@dataclass(frozen=True)
class StepRecord:
    """One step of a run: ``id`` is the user's step id (with its ``:N`` counter).

    ``status`` is completed, failed (retries exhausted) or retrying; ``attempts``
    counts executions of the step's body that were recorded; ``error`` is the last
    attempt's error and ``earlier_errors`` those of the attempts before it.
    """

    id: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    kind: str = "run"
    # Kind-specific details: wake_at (sleep), event and timeout_at (wait_for_event),
    # child_run_id and function_id (invoke), retry_at (a step waiting to retry), branches
    # (parallel).
    detail: dict[str, Any] = field(default_factory=dict)
    # The errors of the step's earlier failed attempts, oldest first (the last
    # ``MAX_EARLIER_ERRORS``): each with its ``attempt`` number, ``type``, ``message``,
    # ``traceback`` (shortened) and ``started_at``/``ended_at`` (epoch ms).
    earlier_errors: list[dict[str, Any]] = field(default_factory=list)
    # Copied from the run a rerun reruns, not executed by this run (its times are that
    # run's).
    reused: bool = False

    @classmethod
    def from_json(cls, step_id: str, raw: str) -> tuple[tuple[int, int], StepRecord]:
        rec = unpack_step(raw)
        detail: dict[str, Any] = {k: rec[k] for k in _DETAIL if k in rec}
        # Branch results of a parallel group share the group's seq; order them by branch.
        return (rec.get("seq", 0), rec.get("branch", -1)), cls(
            id=step_id, status=rec["status"], output=rec.get("output"), error=rec.get("error"),
            attempts=rec.get("attempts", 0), started_at=_time(rec.get("started_at")),
            ended_at=_time(rec.get("ended_at")), kind=rec.get("kind", "run"), detail=detail,
            earlier_errors=list(rec.get("errors") or []), reused=bool(rec.get("reused")),
        )

    @property
    def duration(self) -> float | None:
        if self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds()
        return None


@dataclass(frozen=True)
class Run:
    """One execution of a function for an event, a cron tick or an invoke.

    ``attempt`` counts retries of the handler body itself (errors raised outside steps);
    each step's own attempts are on its ``StepRecord``.
    """

    id: str
    function_id: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    event_ids: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    parent_run_id: str | None = None
    parent_step_id: str | None = None
    attempt: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    wake_at: datetime | None = None
    # How many times an attempt of the run started executing (1 for a run that never
    # retried, parked or crashed).
    executions: int = 0
    # The run this one re-executes (``fanout.rerun``), and the step it reran from.
    rerun_of: str | None = None
    rerun_from: str | None = None
    # With fanout_output_retention: when the step records of this finished run expire
    # (the run itself is kept for the retention).
    steps_until: datetime | None = None
    # A branch run of a parallel group: its parent run (shown inside it).
    branch_of: str | None = None
    # Read from the history sink: the run expired from Redis (fanout_history_sink).
    archived: bool = False

    @property
    def steps_expired(self) -> bool:
        """Whether the step records of this finished run expired already."""
        return self.steps_until is not None and not self.steps and \
            self.steps_until <= datetime.now(UTC)

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    @property
    def duration(self) -> float | None:
        if self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds()
        return None

    @classmethod
    def from_store(cls, run_id: str, raw: dict[str, str], steps: dict[str, str]) -> Run | None:
        if not raw or "function" not in raw:
            return None
        ordered = sorted((StepRecord.from_json(k, v) for k, v in steps.items()),
                         key=lambda item: item[0])
        events = json.loads(raw.get("events", "[]"))
        return cls(
            id=run_id, function_id=raw["function"], status=raw.get("status", "queued"),
            output=json.loads(raw["output"]) if raw.get("output") else None,
            error=json.loads(raw["error"]) if raw.get("error") else None,
            event_ids=[e["id"] for e in events], events=events,
            parent_run_id=raw.get("parent_run_id") or None,
            parent_step_id=raw.get("parent_step_id") or None,
            attempt=int(raw.get("attempt", 0)), steps=[rec for _, rec in ordered],
            created_at=_time(raw.get("created_at")), started_at=_time(raw.get("started_at")),
            ended_at=_time(raw.get("ended_at")), wake_at=_time(raw.get("wake_at")),
            executions=int(raw.get("executions", 0)), rerun_of=raw.get("rerun_of") or None,
            rerun_from=raw.get("rerun_from") or None,
            steps_until=_time(raw.get("steps_until")),
            branch_of=raw.get("branch_of") or None,
        )


@dataclass
class RunNode:
    """A run with the child runs its steps started (``send_event``, ``invoke``,
    ``parallel``), by step id."""

    run: Run
    children: dict[str, list[RunNode]] = field(default_factory=dict)

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
            "steps": [{"id": s.id, "status": s.status, "attempts": s.attempts,
                       "output": s.output, "error": s.error, "duration": s.duration,
                       "earlier_errors": s.earlier_errors}
                      for s in run.steps],
            "children": {k: [c.as_dict() for c in v] for k, v in self.children.items()},
        }

    def format(self, indent: str = "") -> str:
        """A readable text tree: run, its steps (status, attempts, duration), child runs."""
        lines = [indent + run_label(self.run)]
        steps = self.run.steps
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            branch, cont = ("└─ ", "   ") if last else ("├─ ", "│  ")
            lines.append(f"{indent}{branch}{step_label(self.run, step)}")
            for kid in self.children.get(step.id, []):
                lines.append(kid.format(indent + cont + "   "))
        return "\n".join(lines)


def step_label(run: Run, step: StepRecord) -> str:
    """One step in a run's tree: ``step <id>  [status, attempts, duration, error]``."""
    status = step.status
    if run.finished and status in PARKED_STEP_STATUSES:
        status = f"{status} when the run ended {run.status}"
    # Attempts count executions of a step.run body; other kinds have none.
    tries = f"{step.attempts} attempt{'s' if step.attempts != 1 else ''}, " \
        if step.kind == "run" else f"{step.kind}, "
    note = f"{status}, {tries}{_secs(step.duration)}"
    if step.error and step.status != "completed":
        note += f", {step.error.get('type')}: {step.error.get('message')}"
    return f"step {step.id}  [{note}]"


# Step statuses that mean "not over yet" (a run that ended meanwhile stopped them).
PARKED_STEP_STATUSES = frozenset({"sleeping", "waiting", "invoking", "retrying", "parallel"})


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def run_label(run: Run) -> str:
    """A run in a tree: function, short id, status, duration, handler retries, error."""
    label = f"{run.function_id}  {run.id[:12]}  {run.status}"
    extra = [f"duration {_secs(run.duration)}"]
    if run.attempt:
        extra.append(f"handler retries {run.attempt}")
    if run.error:
        extra.append(f"error {run.error.get('type')}: {run.error.get('message')}")
    return f"{label}  ({', '.join(extra)})"
