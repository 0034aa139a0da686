"""Failed runs as a set: query a function's failed runs, rerun them in bulk from the step
that failed (after a dry run), and one app-wide failure hook; on a real Redis and a real
worker, through the API and the CLI."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from support import wait_until

from fanout_celery import Event, Fanout, NonRetriableError
from fanout_celery.cli import fanout as fanout_group
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration


def cli(app: Any, *args: str) -> Any:
    return CliRunner().invoke(fanout_group, list(args), obj=SimpleNamespace(app=app))


@pytest.fixture
def billing(fanout: Fanout) -> dict[str, Any]:
    state: dict[str, Any] = {"broken": True, "calls": [], "alerts": []}

    @fanout.function("bill", event="app/bill", retries=0)
    def bill(ctx: Any) -> str:
        ctx.step.run("load", lambda: state["calls"].append("load"))
        if ctx.event.data["n"] % 2:
            def charge() -> str:
                state["calls"].append("charge")
                if state["broken"]:
                    raise NonRetriableError("the card processor is down")
                return "charged"
            return ctx.step.run("charge", charge)
        return "free"

    @fanout.on_any_failure
    def alert(run: Any) -> None:
        state["alerts"].append((run.function_id, run.id, run.error["message"]))

    @fanout.on_any_failure
    def broken_alert(run: Any) -> None:
        raise RuntimeError("the pager is down too")  # logged; the others still run

    return state


def test_failed_runs_are_found_rerun_in_bulk_from_their_failed_step_and_alerted(
        app: Any, fanout: Fanout, worker: Any, billing: dict[str, Any]) -> None:
    with worker(app):
        ids = fanout.send([Event(name="app/bill", data={"n": n}) for n in range(6)])
        runs = [fanout.wait_for_run(derived_id("bill", e), 20) for e in ids]
        failed = {r.id for r in runs if r.status == "failed"}
        assert len(failed) == 3
        assert set(fanout.failed_runs("bill")) == failed
        wait_until(lambda: len(billing["alerts"]) == 3)
        assert {a[1] for a in billing["alerts"]} == failed
        assert {a[2] for a in billing["alerts"]} == {"the card processor is down"}

        assert sorted(fanout.rerun_failed("bill", dry_run=True)) == sorted(failed)
        assert fanout.failed_runs("bill") and len(fanout.list_runs(function="bill",
                                                                   limit=100).runs) == 6
        billing["broken"] = False
        billing["calls"].clear()
        fresh = fanout.rerun_failed("bill")
        reruns = [fanout.wait_for_run(rid, 20) for rid in fresh]
    assert {r.rerun_of for r in reruns} == failed
    assert {r.status for r in reruns} == {"completed"}
    # From the step that failed: "load" is reused, only "charge" runs again.
    assert billing["calls"] == ["charge"] * 3


def test_the_cli_reruns_failed_runs_after_a_dry_run(app: Any, fanout: Fanout, worker: Any,
                                                   billing: dict[str, Any]) -> None:
    with worker(app):
        ids = fanout.send([Event(name="app/bill", data={"n": n}) for n in (1, 3)])
        for e in ids:
            fanout.wait_for_run(derived_id("bill", e), 20)
        dry = cli(app, "rerun", "--failed", "bill", "--since", "1h", "--dry-run")
        assert dry.exit_code == 0 and dry.output.startswith("2 failed run(s) of bill")
        assert len(fanout.list_runs(function="bill", limit=100).runs) == 2  # nothing started
        billing["broken"] = False
        done = cli(app, "rerun", "--failed", "bill", "--since", "1h")
        new_ids = done.output.split()
        assert done.exit_code == 0 and len(new_ids) == 2
        assert all(fanout.wait_for_run(rid, 20).status == "completed" for rid in new_ids)
        assert cli(app, "rerun", "--failed", "nobody").exit_code == 1
