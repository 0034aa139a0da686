"""``celery fanout ...``: every command of the CLI against a real Redis and real runs.

The commands are invoked through click's ``CliRunner`` with ``obj=`` an object whose
``.app`` is the test app, as Celery's ``CLIContext`` provides it; one test runs the real
``celery`` program to check that the ``celery.commands`` entry point is installed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner, Result
from procs import REPO_ROOT, wait_for

from fanout_celery import Fanout, NonRetriableError, RetryPolicy
from fanout_celery.cli import fanout as fanout_group

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_retries=1, backoff=0.05, jitter=0)


def cli(app: Any, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(fanout_group, list(args), obj=SimpleNamespace(app=app),
                              input=input)


def ok(app: Any, *args: str, input: str | None = None) -> str:
    """Run a command that must succeed; returns its output."""
    result = cli(app, *args, input=input)
    assert result.exit_code == 0, f"fanout {' '.join(args)} exited {result.exit_code}:\n" \
        f"{result.output}\n{result.exception!r}"
    return result.output


def table(output: str) -> list[dict[str, str]]:
    """The rows of a table the CLI printed, as dicts keyed by its header.

    Header names are two or more spaces apart ("CREATED (UTC)" is one name) and cells are
    left-aligned under them, so each cell is cut at its header's offsets.
    """
    lines = [line for line in output.splitlines() if line.strip()]
    header = lines[0]
    found = list(re.finditer(r"\S+(?: \S+)*", header))
    names = [m.group() for m in found]
    starts = [m.start() for m in found]
    ends = [*starts[1:], None]
    return [{name: line[a:b].strip() for name, a, b in zip(names, starts, ends, strict=True)}
            for line in lines[1:] if not line.startswith("(more")]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def pause_between_timestamps() -> datetime:
    """A moment strictly between what was created before and what is created after (the
    store keeps millisecond times, so two sides of it must be a few ms apart)."""
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    return moment


def wait_status(fanout: Fanout, run_id: str, status: str, timeout: float = 20.0) -> None:
    def reached() -> bool:
        run = fanout.get_run(run_id)
        return run is not None and run.status == status

    wait_for(reached, timeout, f"run {run_id} to be {status}")


def only_run(fanout: Fanout, event_id: str) -> str:
    [run] = fanout.runs_for_event(event_id)
    return run.id


# -- functions -----------------------------------------------------------------------


def test_functions_lists_triggers_retries_queue_and_next_cron_time(app, fanout):
    @fanout.function("weekly", cron="0 12 * * 5", retries=2)
    def weekly(ctx):
        return None

    @fanout.function("mailer", event=["app/mail.send", "app/mail.*"], queue="mail",
                     retries=FAST)
    def mailer(ctx):
        return None

    rows = {row["FUNCTION"]: row for row in table(ok(app, "functions"))}

    assert set(rows) == {"weekly", "mailer"}
    assert rows["mailer"]["TRIGGERS"] == "app/mail.send, app/mail.*"
    assert rows["mailer"]["RETRIES"] == "1"
    assert rows["mailer"]["QUEUE"] == "mail"
    assert rows["mailer"]["NEXT CRON"] == "-"
    assert rows["weekly"]["TRIGGERS"] == "cron 0 12 * * 5"
    assert rows["weekly"]["RETRIES"] == "2"
    assert rows["weekly"]["QUEUE"] == "(default)"
    # The next Friday at noon (UTC), within the coming week.
    nxt = datetime.fromisoformat(rows["weekly"]["NEXT CRON"])
    assert (nxt.weekday(), nxt.hour, nxt.minute, nxt.second) == (4, 12, 0, 0)
    assert datetime.now(UTC) < nxt <= datetime.now(UTC) + timedelta(days=7)


def test_functions_lists_functions_published_by_workers_of_other_processes(
        app, fanout, redis_url):
    other_app = Celery("other", broker=redis_url, set_as_current=False)
    other = Fanout(other_app)

    @other.function("remote", event="app/remote")
    def remote(ctx):
        return None

    other.publish_subscriptions()
    other_app.close()

    [row] = table(ok(app, "functions"))
    # Declared elsewhere: its triggers are known, its retry policy is not.
    assert (row["FUNCTION"], row["TRIGGERS"], row["RETRIES"]) == ("remote", "app/remote", "?")


# -- send ----------------------------------------------------------------------------


def test_send_with_data_starts_a_run_of_the_event(app, fanout, worker):
    @fanout.function("greet", event="app/greet")
    def greet(ctx):
        return ctx.step.run("hello", lambda: f"hello {ctx.event.data['name']}")

    with worker(app):
        event_id = ok(app, "send", "app/greet", "--data", '{"name": "Ada"}').strip()
        done = fanout.wait_for_run(only_run(fanout, event_id), timeout=20)

    assert done.status == "completed"
    assert done.output == "hello Ada"
    assert done.events[0]["id"] == event_id
    assert done.events[0]["data"] == {"name": "Ada"}


def test_send_file_sends_every_event_of_the_file(app, fanout, worker, tmp_path):
    @fanout.function("double", event="app/number")
    def double(ctx):
        return ctx.step.run("double", lambda: ctx.event.data["n"] * 2)

    path = tmp_path / "events.json"
    path.write_text(json.dumps([{"name": "app/number", "data": {"n": 1}, "id": "number-one"},
                                {"name": "app/number", "data": {"n": 2}}]))
    with worker(app):
        ids = ok(app, "send", "--file", str(path)).split()
        outputs = [fanout.wait_for_run(only_run(fanout, eid), timeout=20).output for eid in ids]
        # ``--file -`` reads stdin.
        [stdin_id] = ok(app, "send", "--file", "-",
                        input='{"name": "app/number", "data": {"n": 21}}').split()
        from_stdin = fanout.wait_for_run(only_run(fanout, stdin_id), timeout=20).output

    assert ids[0] == "number-one"
    assert outputs == [2, 4]
    assert from_stdin == 42


# -- runs ----------------------------------------------------------------------------


@pytest.fixture
def mixed_runs(app, fanout, worker) -> SimpleNamespace:
    """Three finished runs: ``good`` for events a1 and both, ``bad`` (failed) for both."""

    @fanout.function("good", event=["app/a", "app/both"])
    def good(ctx):
        return ctx.step.run("ok", lambda: "ok")

    @fanout.function("bad", event="app/both", retries=0)
    def bad(ctx):
        ctx.step.run("reject", reject)

    with worker(app):
        [a1] = fanout.send({"name": "app/a"})
        before_both = pause_between_timestamps()
        [both] = fanout.send({"name": "app/both"})
        runs = [r for eid in (a1, both) for r in fanout.runs_for_event(eid)]
        for run in runs:
            fanout.wait_for_run(run.id, timeout=20)
    by = {(r.function_id, r.events[0]["id"]): r.id for r in runs}
    return SimpleNamespace(a1=a1, both=both, before_both=before_both,
                           good_a1=by[("good", a1)], good_both=by[("good", both)],
                           bad_both=by[("bad", both)])


def reject() -> None:
    raise NonRetriableError("no, never")


def test_runs_lists_every_run_newest_first_with_status_steps_and_error(app, mixed_runs):
    rows = table(ok(app, "runs"))

    assert [r["RUN"] for r in rows][-1] == mixed_runs.good_a1  # the oldest is last
    assert {r["RUN"] for r in rows} == {mixed_runs.good_a1, mixed_runs.good_both,
                                        mixed_runs.bad_both}
    by_id = {r["RUN"]: r for r in rows}
    bad = by_id[mixed_runs.bad_both]
    assert (bad["FUNCTION"], bad["STATUS"], bad["STEPS"], bad["ERROR"]) == \
        ("bad", "failed", "1", "no, never")
    good = by_id[mixed_runs.good_a1]
    assert (good["FUNCTION"], good["STATUS"], good["STEPS"], good["ERROR"]) == \
        ("good", "completed", "1", "")
    assert good["DURATION"].endswith(("ms", "s"))


def test_runs_filters_by_function_status_and_event(app, mixed_runs):
    def ids(*args: str) -> set[str]:
        return {r["RUN"] for r in table(ok(app, "runs", *args))}

    assert ids("--function", "good") == {mixed_runs.good_a1, mixed_runs.good_both}
    assert ids("--status", "failed") == {mixed_runs.bad_both}
    assert ids("--status", "completed") == {mixed_runs.good_a1, mixed_runs.good_both}
    assert ids("--event", mixed_runs.both) == {mixed_runs.good_both, mixed_runs.bad_both}
    assert ids("--event", mixed_runs.a1) == {mixed_runs.good_a1}
    assert ids("--function", "good", "--status", "failed") == set()
    assert ids("--status", "running") == set()


def test_runs_filters_by_creation_time(app, mixed_runs):
    def ids(*args: str) -> set[str]:
        return {r["RUN"] for r in table(ok(app, "runs", *args))}

    since = iso(mixed_runs.before_both)
    assert ids("--since", since) == {mixed_runs.good_both, mixed_runs.bad_both}
    assert ids("--until", since) == {mixed_runs.good_a1}
    assert ids("--since", "1h") == ids() == {mixed_runs.good_a1, mixed_runs.good_both,
                                            mixed_runs.bad_both}
    assert ids("--until", "1h") == set()


def test_runs_paginates_past_the_limit(app, fanout, worker):
    @fanout.function("tick", event="app/tick")
    def tick(ctx):
        return ctx.step.run("n", lambda: ctx.event.data["n"])

    with worker(app):
        event_ids = []
        for n in range(7):  # one by one: distinct creation times, a known order
            event_ids += fanout.send({"name": "app/tick", "data": {"n": n}})
            time.sleep(0.002)
        run_ids = [only_run(fanout, eid) for eid in event_ids]
        for run_id in run_ids:
            fanout.wait_for_run(run_id, timeout=20)

    pages = [ok(app, "runs", "--limit", "3", "--page", str(page)) for page in (1, 2, 3, 4)]
    rows = [[r["RUN"] for r in table(page)] for page in pages[:3]]

    assert [len(r) for r in rows] == [3, 3, 1]
    assert "(more: --page 2)" in pages[0]
    assert "(more: --page 3)" in pages[1]
    assert "(more" not in pages[2]
    # Every run once, newest first across pages.
    assert [rid for page in rows for rid in page] == list(reversed(run_ids))
    assert table(pages[3]) == []


# -- run -----------------------------------------------------------------------------


@pytest.fixture
def fan_tree(app, fanout, worker) -> SimpleNamespace:
    """A finished parent run whose ``fan`` step started two child runs, one failed."""

    @fanout.function("parent", event="app/parent")
    def parent(ctx):
        users = ctx.step.run("fetch", lambda: [1, 2])
        ctx.step.send_event("fan", [{"name": "app/child", "data": {"user": u}} for u in users])
        return {"count": len(users)}

    @fanout.function("child", event="app/child", retries=FAST)
    def child(ctx):
        user = ctx.step.run("load", lambda: ctx.event.data["user"])
        if user == 2:
            ctx.step.run("email", reject)
        return user

    with worker(app):
        [event_id] = fanout.send({"name": "app/parent", "data": {"batch": "weekly"}})
        parent_id = only_run(fanout, event_id)
        fanout.wait_for_run(parent_id, timeout=20)
        children = [only_run(fanout, eid) for eid in fanout.get_run(parent_id).steps[1].output]
        for run_id in children:
            fanout.wait_for_run(run_id, timeout=20)
    return SimpleNamespace(event_id=event_id, parent_id=parent_id, children=children)


def test_run_shows_the_trigger_the_tree_of_steps_and_children_and_a_waterfall(app, fan_tree):
    out = ok(app, "run", fan_tree.parent_id)
    lines = out.splitlines()

    assert lines[0] == f"run {fan_tree.parent_id}  parent  completed"
    assert f"trigger   app/parent  {fan_tree.event_id}  " + '{"batch": "weekly"}' in out
    # The tree: the run, its steps, and under the fan-out step its two child runs.
    tree_top = lines.index(next(line for line in lines
                                if line.startswith(f"parent  {fan_tree.parent_id[:12]}")))
    tree = lines[tree_top:tree_top + 8]
    assert tree[0].startswith(f"parent  {fan_tree.parent_id[:12]}  completed  (duration ")
    assert tree[1].startswith("├── step fetch  [completed, 1 attempt, ")
    assert tree[2].startswith("└── step fan  [completed, send_event, ")  # no body: no attempts
    ok_child, failed_child = fan_tree.children
    assert tree[3].strip().startswith(f"├── child  {ok_child[:12]}  completed")
    assert tree[4].strip().startswith("│   └── step load  [completed, 1 attempt")
    assert tree[5].strip().startswith(f"└── child  {failed_child[:12]}  failed")
    assert "error NonRetriableError: no, never" in tree[5]
    assert tree[7].strip().startswith("└── step email  [failed, 1 attempt, ")
    assert tree[7].endswith("NonRetriableError: no, never]")
    # The waterfall: one bar per step of the run, on the run's time line.
    bars = [line for line in lines if "|" in line and "queued" in line]
    assert [b.split()[0] for b in bars] == ["fetch", "fan"]
    for bar in bars:
        assert "█" in bar and ", ran " in bar


def test_run_of_a_failed_run_shows_its_error(app, fan_tree):
    out = ok(app, "run", fan_tree.children[1])

    assert out.splitlines()[0] == f"run {fan_tree.children[1]}  child  failed"
    assert f"  parent    {fan_tree.parent_id}  step fan" in out
    assert "  error     NonRetriableError: no, never" in out


def test_run_json_is_the_tree_with_children(app, fan_tree):
    tree = json.loads(ok(app, "run", fan_tree.parent_id, "--json"))

    assert tree["id"] == fan_tree.parent_id
    assert tree["status"] == "completed"
    assert tree["output"] == {"count": 2}
    assert [s["id"] for s in tree["steps"]] == ["fetch", "fan"]
    kids = tree["children"]["fan"]
    assert [k["id"] for k in kids] == fan_tree.children
    assert [k["status"] for k in kids] == ["completed", "failed"]
    assert all(k["parent_run_id"] == fan_tree.parent_id for k in kids)
    assert kids[1]["error"]["step"] == "email"

    shallow = json.loads(ok(app, "run", fan_tree.parent_id, "--json", "--depth", "0"))
    assert shallow["children"] == {}


def test_run_shows_where_a_parked_run_waits(app, fanout, worker):
    @fanout.function("napper", event="app/nap")
    def napper(ctx):
        ctx.step.run("before", lambda: 1)
        ctx.step.sleep("nap", 600)

    with worker(app):
        run_id = only_run(fanout, fanout.send({"name": "app/nap"})[0])
        wait_status(fanout, run_id, "sleeping")
        out = ok(app, "run", run_id)
        fanout.cancel(run_id)

    assert out.splitlines()[0] == f"run {run_id}  napper  sleeping"
    assert "  parked until " in out and "(sleeping)" in out
    assert re.search(r"  step nap wakes at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", out)
    assert "step nap  [sleeping, sleep, " in out


# -- events --------------------------------------------------------------------------


def test_events_lists_events_newest_first_with_the_runs_they_started(app, fanout, worker):
    @fanout.function("audit", event="app/order.*")
    def audit(ctx):
        return ctx.step.run("log", lambda: ctx.event.name)

    @fanout.function("ship", event="app/order.paid")
    def ship(ctx):
        return ctx.step.run("ship", lambda: "shipped")

    with worker(app):
        [created] = fanout.send({"name": "app/order.created"})
        time.sleep(0.002)  # distinct millisecond timestamps: a known order
        [paid] = fanout.send({"name": "app/order.paid"})
        for eid in (created, paid):
            for run in fanout.runs_for_event(eid):
                fanout.wait_for_run(run.id, timeout=20)
    paid_runs = sorted(r.id for r in fanout.runs_for_event(paid))

    rows = table(ok(app, "events"))

    assert [(r["EVENT"], r["NAME"]) for r in rows] == [
        (paid, "app/order.paid"), (created, "app/order.created")]
    assert rows[0]["RUNS"] == "2"
    assert rows[0]["RUN IDS"] == ", ".join(rid[:12] for rid in paid_runs)
    assert rows[1]["RUNS"] == "1"
    assert rows[1]["RUN IDS"] == only_run(fanout, created)[:12]
    assert [r["EVENT"] for r in table(ok(app, "events", "--name", "app/order.created"))] \
        == [created]
    assert [r["EVENT"] for r in table(ok(app, "events", "--limit", "1"))] == [paid]
    assert table(ok(app, "events", "--since", "2099-01-01T00:00:00")) == []


# -- replay --------------------------------------------------------------------------


@pytest.fixture
def order_functions(fanout) -> dict[str, list[Any]]:
    """Two functions subscribed to ``app/order``; each records the data it saw."""
    seen: dict[str, list[Any]] = {"bill": [], "notify": []}

    @fanout.function("bill", event="app/order")
    def bill(ctx):
        return ctx.step.run("bill", lambda: seen["bill"].append(ctx.event.data) or "billed")

    @fanout.function("notify", event="app/order")
    def notify(ctx):
        return ctx.step.run("notify", lambda: seen["notify"].append(ctx.event.data) or "sent")

    return seen


def finish_all(fanout: Fanout, event_ids: list[str]) -> list[Any]:
    runs = [r for eid in event_ids for r in fanout.runs_for_event(eid)]
    return [fanout.wait_for_run(r.id, timeout=20) for r in runs]


def test_replay_event_id_starts_new_runs_of_every_subscriber(app, fanout, worker,
                                                             order_functions):
    with worker(app):
        [original] = fanout.send({"name": "app/order", "data": {"order": 7}})
        first = finish_all(fanout, [original])
        [new_id] = ok(app, "replay", original).split()
        replayed = finish_all(fanout, [new_id])

    assert new_id != original
    stored = fanout.get_event(new_id)
    assert stored is not None
    assert stored["replay_of"] == original
    assert (stored["name"], stored["data"]) == ("app/order", {"order": 7})
    assert sorted(r.function_id for r in replayed) == ["bill", "notify"]
    assert {r.id for r in replayed}.isdisjoint({r.id for r in first})
    assert all(r.status == "completed" for r in replayed)
    # Every subscriber ran again, on the same data.
    assert order_functions == {"bill": [{"order": 7}] * 2, "notify": [{"order": 7}] * 2}
    # The original event and its runs are untouched.
    assert sorted(r.id for r in fanout.runs_for_event(original)) == sorted(r.id for r in first)


def test_replay_by_name_since_replays_only_the_recent_events_of_that_name(
        app, fanout, worker, order_functions):
    @fanout.function("other", event="app/other")
    def other(ctx):
        return None

    with worker(app):
        [old] = fanout.send({"name": "app/order", "data": {"order": 1}})
        since = pause_between_timestamps()
        recent = []
        for n in (2, 3):  # one by one: distinct timestamps, a known order
            recent += fanout.send({"name": "app/order", "data": {"order": n}})
            time.sleep(0.002)
        fanout.send({"name": "app/other"})
        finish_all(fanout, [old, *recent])
        new_ids = ok(app, "replay", "--name", "app/order", "--since", iso(since)).split()
        finish_all(fanout, new_ids)

    # Oldest first, as they were first sent.
    assert [fanout.get_event(eid)["replay_of"] for eid in new_ids] == recent
    # The old event was not replayed (runs of one function execute on 4 threads: in any
    # order).
    assert sorted(o["order"] for o in order_functions["bill"]) == [1, 2, 2, 3, 3]


# -- rerun ---------------------------------------------------------------------------


@pytest.fixture
def three_steps(fanout) -> SimpleNamespace:
    """``pipeline``: steps s1, s2, s3 counting their executions; s2 rejects while
    ``state.broken``."""
    state = SimpleNamespace(broken=False, calls=[])

    def body(step: str) -> str:
        state.calls.append(step)
        if step == "s2" and state.broken:
            raise NonRetriableError("s2 is broken")
        return f"{step}#{state.calls.count(step)}"

    @fanout.function("pipeline", event="app/pipeline", retries=0)
    def pipeline(ctx):
        return [ctx.step.run(step, body, step) for step in ("s1", "s2", "s3")]

    return state


def test_rerun_from_step_re_executes_only_that_step_and_the_later_ones(
        app, fanout, worker, three_steps):
    with worker(app):
        run_id = only_run(fanout, fanout.send({"name": "app/pipeline"})[0])
        first = fanout.wait_for_run(run_id, timeout=20)
        new_id = ok(app, "rerun", run_id, "--from-step", "s2").strip()
        again = fanout.wait_for_run(new_id, timeout=20)

    assert first.output == ["s1#1", "s2#1", "s3#1"]
    assert new_id != run_id
    assert again.status == "completed"
    assert three_steps.calls == ["s1", "s2", "s3", "s2", "s3"]
    # s1 was not executed again: its recorded output was reused.
    assert again.output == ["s1#1", "s2#2", "s3#2"]
    assert again.events == first.events
    assert fanout.get_run(run_id).output == first.output


def test_rerun_by_default_starts_from_the_failed_step(app, fanout, worker, three_steps):
    three_steps.broken = True
    with worker(app):
        run_id = only_run(fanout, fanout.send({"name": "app/pipeline"})[0])
        failed = fanout.wait_for_run(run_id, timeout=20)
        three_steps.broken = False  # the bug is fixed
        new_id = ok(app, "rerun", run_id).strip()
        fixed = fanout.wait_for_run(new_id, timeout=20)

    assert failed.status == "failed"
    assert failed.error["step"] == "s2"
    assert fixed.status == "completed"
    assert three_steps.calls == ["s1", "s2", "s2", "s3"]
    assert fixed.output == ["s1#1", "s2#2", "s3#1"]


# -- cancel --------------------------------------------------------------------------


@pytest.fixture
def nappers(fanout) -> list[str]:
    """Functions ``nap-a`` and ``nap-b`` that sleep for ten minutes then record waking."""
    woke: list[str] = []

    def napper(ctx):
        ctx.step.sleep("nap", 600)
        woke.append(ctx.run_id)

    fanout.function("nap-a", event="app/nap.a")(napper)
    fanout.function("nap-b", event="app/nap.b")(napper)
    return woke


def start_sleeping(fanout: Fanout, name: str) -> str:
    run_id = only_run(fanout, fanout.send({"name": name})[0])
    wait_status(fanout, run_id, "sleeping")
    return run_id


def test_cancel_run_id_cancels_a_parked_run(app, fanout, worker, nappers):
    with worker(app):
        run_id = start_sleeping(fanout, "app/nap.a")
        out = ok(app, "cancel", run_id)
        done = fanout.wait_for_run(run_id, timeout=5)
        again = ok(app, "cancel", run_id)

    assert out.strip() == f"{run_id}: cancelled"
    assert done.status == "cancelled"
    assert done.error["message"] == "cancelled from the command line"
    assert again.strip() == f"{run_id}: final"
    assert nappers == []


def test_cancel_function_since_cancels_only_that_functions_recent_runs(
        app, fanout, worker, nappers):
    with worker(app):
        older = start_sleeping(fanout, "app/nap.a")
        since = pause_between_timestamps()
        recent = [start_sleeping(fanout, "app/nap.a") for _ in range(2)]
        other = start_sleeping(fanout, "app/nap.b")
        out = ok(app, "cancel", "--function", "nap-a", "--since", iso(since))
        statuses = {rid: fanout.get_run(rid).status for rid in (older, *recent, other)}
        everything = ok(app, "cancel", "--function", "nap-b")
        last = fanout.get_run(other).status

    assert out.strip() == "cancelled 2 run(s)"
    assert statuses == {older: "sleeping", recent[0]: "cancelled", recent[1]: "cancelled",
                        other: "sleeping"}
    assert everything.strip() == "cancelled 1 run(s)"
    assert last == "cancelled"
    fanout.cancel(older)


# -- errors --------------------------------------------------------------------------


ERRORS: list[tuple[list[str], str]] = [
    (["run", "0" * 32], "no run 00000000000000000000000000000000 (unknown or expired)"),
    (["run", "0" * 32, "--json"], "no run 00000000000000000000000000000000"),
    (["rerun", "0" * 32], "no run 00000000000000000000000000000000 (unknown or expired)"),
    (["cancel", "0" * 32], "no run 00000000000000000000000000000000 (unknown or expired)"),
    (["replay", "0" * 32], "no stored event 00000000000000000000000000000000"),
    (["runs", "--since", "yesterday-ish"], "'yesterday-ish': use an ISO time or a duration"),
    (["runs", "--until", "-5m"], "'-5m': use an ISO time or a duration"),
    (["events", "--since", "soon"], "'soon': use an ISO time or a duration"),
    (["replay", "--name", "app/x", "--since", "x"], "'x': use an ISO time or a duration"),
    (["cancel", "--function", "known", "--since", "x"], "'x': use an ISO time or a duration"),
    (["runs", "--status", "sleepy"], "'sleepy' is not one of"),
    (["runs", "--limit", "0"], "'--limit': 0 is not in the range"),
    (["runs", "--page", "0"], "'--page': 0 is not in the range"),
    (["send", "bad name!"], "invalid event 'bad name!'"),
    (["send", "fanout/function.failed"], "reserved for the library"),
    (["send", "app/x", "--data", "{not json"], "not JSON"),
    (["send", "app/x", "--data", "[1, 2]"], "data: Input should be a valid dictionary"),
    (["send"], "give an event NAME or --file"),
    (["replay"], "give an EVENT_ID or --name"),
    (["cancel"], "give a RUN_ID or --function"),
    (["cancel", "--function", "nobody"], "no function 'nobody' is declared"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_errors_give_a_clean_message_and_a_non_zero_exit(app, fanout, args, message):
    @fanout.function("known", event="app/known")
    def known(ctx):
        return None

    result = cli(app, *args)

    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}"
    assert "Traceback" not in result.output
    assert "Error: " in result.output
    assert message in result.output


def test_rerun_from_an_unknown_step_names_the_runs_steps(app, fanout, worker, three_steps):
    with worker(app):
        run_id = only_run(fanout, fanout.send({"name": "app/pipeline"})[0])
        fanout.wait_for_run(run_id, timeout=20)

    result = cli(app, "rerun", run_id, "--from-step", "s9")

    assert result.exit_code == 1
    assert f"run {run_id} has no step 's9'; its steps: s1, s2, s3" in result.output
    assert three_steps.calls == ["s1", "s2", "s3"]


def test_replaying_a_library_event_is_refused_cleanly(app, fanout):
    @fanout.function("known", event="app/known")
    def known(ctx):
        return None

    run = fanout.get_run(fanout.invoke("known"))  # triggered by fanout/function.invoked
    events_before = fanout.store.count("events")

    by_id = cli(app, "replay", run.event_ids[0])
    by_name = cli(app, "replay", "--name", "fanout/function.invoked", "--yes")

    for result in (by_id, by_name):
        assert result.exit_code == 1
        assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}"
        assert "reserved for the library" in result.output
    assert fanout.store.count("events") == events_before
    assert [r["RUN"] for r in table(ok(app, "runs"))] == [run.id]


def test_a_bad_fanout_setting_is_a_clean_error():
    not_redis = Celery("amqp-app", broker="amqp://guest@localhost//", set_as_current=False)

    try:
        result = cli(not_redis, "runs")
    finally:
        not_redis.close()

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}"
    assert "Error: fanout needs Redis for its state: set app.conf.fanout_redis_url" \
        in result.output


def test_without_an_app_the_cli_asks_for_one():
    result = CliRunner().invoke(fanout_group, ["runs"], obj=None)

    assert result.exit_code == 2
    assert "give the Celery app with -A" in result.output


# -- the celery entry point ------------------------------------------------------------


def test_celery_fanout_runs_through_the_installed_entry_point(redis_url, app, fanout):
    # The run is created here and never executed (no worker): the other process's
    # `fanout runs` finds it through Redis alone.
    @fanout.function("cli-hello", event="test/cli.hello")
    def hello(ctx):
        return None

    run_id = only_run(fanout, fanout.send({"name": "test/cli.hello"})[0])
    env = {**os.environ, "FANOUT_TEST_REDIS_URL": redis_url,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                     os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.apps.cli_app", "fanout", "runs"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == [
        "RUN", "FUNCTION", "STATUS", "CREATED", "(UTC)", "DURATION", "STEPS", "ERROR"]
    [row] = table(proc.stdout)
    assert (row["RUN"], row["FUNCTION"], row["STATUS"]) == (run_id, "cli-hello", "queued")



# -- what a new user ran into -------------------------------------------------------


def test_run_rerun_and_cancel_take_the_12_character_ids_tables_print(app, fan_tree, fanout):
    short = fan_tree.parent_id[:12]
    assert ok(app, "run", short).splitlines()[0].startswith(f"run {fan_tree.parent_id}")
    assert cli(app, "run", "zz" + short[2:]).exit_code == 1  # no such run: a clean error


def test_a_reruns_waterfall_stays_on_its_lines_and_marks_the_reused_steps(
        app, fanout, worker, three_steps):
    with worker(app):
        first = only_run(fanout, fanout.send({"name": "app/pipeline"})[0])
        fanout.wait_for_run(first, timeout=20)
        again = ok(app, "rerun", first, "--from-step", "s3").strip()
        fanout.wait_for_run(again, timeout=20)
        out = ok(app, "run", again)
    assert f"  rerun of  {first}  from step s3" in out
    assert [s.reused for s in fanout.get_run(again).steps] == [True, True, False]
    bars = [line for line in out.splitlines() if line.startswith(("s1 ", "s2 ", "s3 "))]
    assert len(bars) == 3 and all(len(line) < 120 for line in bars), bars
    assert all(f"reused from run {first}" in line for line in bars[:2]), out
    assert "queued -" not in out and "█" in bars[2], out


def test_a_cancelled_runs_sleep_is_shown_ended_not_waiting(app, fanout, worker, nappers):
    with worker(app):
        run_id = start_sleeping(fanout, "app/nap.a")
        fanout.cancel(run_id)
        out = ok(app, "run", run_id)
    assert "step nap  [sleeping when the run ended cancelled, sleep, " in out
    assert "wakes at" not in out and "parked until" not in out
    bar = next(line for line in out.splitlines() if line.startswith("nap "))
    assert "░" in bar and "█" not in bar and ", waited " in bar  # a sleep waits


def test_rerun_of_an_active_run_is_refused(app, fanout, worker, nappers):
    with worker(app):
        run_id = start_sleeping(fanout, "app/nap.a")
        result = cli(app, "rerun", run_id)
        fanout.cancel(run_id)
    assert result.exit_code == 1 and "still sleeping" in result.output
    assert [r["RUN"] for r in table(ok(app, "runs"))] == [run_id]  # no second run


def test_replay_by_name_without_since_asks_first(app, fanout, worker, order_functions):
    with worker(app):
        fanout.send({"name": "app/order", "data": {"order": 1}})
        refused = cli(app, "replay", "--name", "app/order", input="n\n")
        assert refused.exit_code == 1
        assert "replay all 1 stored events named 'app/order'" in refused.output
        assert "narrow them with --since, or pass --yes" in refused.output
        events = fanout.store.count("events")
        assert ok(app, "replay", "--name", "app/order", input="y\n").strip()
        assert ok(app, "replay", "--name", "app/order", "--yes").strip()
        # The first replayed the one event; the second, it and its replay.
        assert fanout.store.count("events") == events + 1 + 2


def test_an_unknown_function_and_an_unreachable_redis_are_one_line_errors(app, fanout):
    unknown = cli(app, "runs", "--function", "nope")
    assert unknown.exit_code == 1 and "no function 'nope'" in unknown.output
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Celery("down", set_as_current=False)
    down.conf.update(broker_url=f"redis://127.0.0.1:{port}/0", result_backend=None,
                     fanout_redis_options={"socket_connect_timeout": 0.2})
    result = cli(down, "runs")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "cannot reach Redis or the broker" in result.output
