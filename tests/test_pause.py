"""Pausing and resuming a function, on a real Redis and a real worker: while paused no run
starts, a run under way stops at its next step boundary, events that arrive are held (or,
paused with "skip", their runs skipped), and resume lets every held run go on from where
it stopped; cron slots do not fire while paused."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from support import wait_until

from fanout_celery import ConfigurationError, Event, Fanout
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration


def test_a_paused_function_holds_its_runs_and_resume_lets_them_go_on(
        app: Any, fanout: Fanout, worker: Any) -> None:
    gate = threading.Event()
    calls: list[tuple[str, int]] = []

    @fanout.function("export", event="app/export")
    def export(ctx: Any) -> int:
        n = ctx.event.data["n"]
        ctx.step.run("first", lambda: calls.append(("first", n)))
        if n == 0:
            gate.wait(10)  # the run is under way when the pause comes
        ctx.step.run("second", lambda: calls.append(("second", n)))
        return n

    @fanout.function("other", event="app/other")
    def other(ctx: Any) -> str:
        return "unaffected"

    with pytest.raises(ConfigurationError, match="pause mode"):
        fanout.pause("export", mode="later")
    with worker(app):
        [running] = fanout.send(Event(name="app/export", data={"n": 0}))
        running_id = derived_id("export", running)
        wait_until(lambda: ("first", 0) in calls)
        fanout.pause("export")
        assert fanout.paused() == {"export": "hold"}
        gate.set()  # its next step boundary comes after the pause: it stops there
        wait_until(lambda: fanout.get_run(running_id).status == "paused", 10)
        [later] = fanout.send(Event(name="app/export", data={"n": 1}))
        later_id = derived_id("export", later)
        wait_until(lambda: fanout.get_run(later_id).status == "paused", 10)
        [o] = fanout.send(Event(name="app/other"))
        assert fanout.wait_for_run(derived_id("other", o), 10).output == "unaffected"
        assert ("second", 0) not in calls and ("first", 1) not in calls

        assert fanout.resume("export") == 2
        done = [fanout.wait_for_run(r, 20) for r in (running_id, later_id)]
    assert [r.output for r in done] == [0, 1]
    assert fanout.paused() == {}
    # Each step once: the held run went on from its last step.
    assert sorted(calls) == [("first", 0), ("first", 1), ("second", 0), ("second", 1)]
    assert done[0].executions == 2


def test_paused_with_skip_new_runs_are_skipped(app: Any, fanout: Fanout, worker: Any) -> None:
    @fanout.function("digest", event="app/digest")
    def digest(ctx: Any) -> str:
        return ctx.step.run("build", lambda: "built")

    fanout.pause("digest", mode="skip")
    with worker(app):
        [e] = fanout.send(Event(name="app/digest"))
        skipped = fanout.wait_for_run(derived_id("digest", e), 10)
        assert skipped.status == "skipped" and "paused" in skipped.error["message"]
        assert fanout.resume("digest") == 0
        [e2] = fanout.send(Event(name="app/digest"))
        assert fanout.wait_for_run(derived_id("digest", e2), 10).output == "built"


def test_cron_slots_of_a_paused_function_do_not_fire(app: Any, fanout: Fanout) -> None:
    @fanout.function("tick", cron="* * * * * *")
    def tick(ctx: Any) -> None:
        return None

    fanout.publish_subscriptions()
    now = fanout.clock()
    fanout.engine.cron.fire_due(now - 5_000)  # the mark: 5 s ago
    fanout.pause("tick")
    assert fanout.engine.cron.fire_due(now) == 0
    fanout.resume("tick")
    # The missed slots (policy "latest": the last one) fire on resume.
    assert fanout.engine.cron.fire_due(now) == 1


def test_the_cli_pauses_resumes_and_shows_it(app: Any, fanout: Fanout) -> None:
    from types import SimpleNamespace

    from click.testing import CliRunner

    from fanout_celery.cli import fanout as group

    @fanout.function("export", event="app/export")
    def export(ctx: Any) -> None:
        return None

    fanout.publish_subscriptions()

    def cli(*args: str) -> str:
        result = CliRunner().invoke(group, list(args), obj=SimpleNamespace(app=app))
        assert result.exit_code == 0, result.output
        return result.output

    assert "paused (skip)" in cli("pause", "export", "--skip")
    assert "paused (skip)" in cli("functions")
    assert "resumed, 0 held run(s)" in cli("resume", "export")
    assert "active" in cli("functions")
