"""``ctx.step.parallel``: branches run concurrently as branch runs, joined in order.

Real redis-server, real Celery workers: in-process (threads pool) for most tests, worker
subprocesses of ``tests/apps/parallel_app.py`` for the test that SIGKILLs a worker in
the middle of a group. Step bodies count their executions in Redis.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis
from celery import current_task
from procs import wait_for, worker_process

from fanout_celery import Fanout, NonRetriableError, RetryPolicy, StepError
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)
PARALLEL_APP = "tests.apps.parallel_app"
# Mirrors tests/apps/parallel_app.py.
APP_BRANCHES = 3
APP_RELEASE = "parallel:release"


def app_count(step: str) -> str:
    return f"parallel:count:{step}"


def app_in_branch(index: int) -> str:
    return f"parallel:in-branch:{index}"


def counter(client: redis.Redis, name: str):
    """A step body that counts its executions in Redis under ``par:<name>``."""

    def body(value=None):
        client.incr(f"par:{name}")
        return value

    return body


def count(client: redis.Redis, name: str) -> int:
    return int(client.get(f"par:{name}") or 0)


def branch_run_id(run_id: str, group: str, index: int) -> str:
    return derived_id(run_id, group, str(index))


def step_of(run, step_id: str):
    [record] = [s for s in run.steps if s.id == step_id]
    return record


def test_branches_run_concurrently_on_separate_tasks_and_return_results_in_order(
        app, fanout: Fanout, worker, redis_client):
    def slow(index: int) -> int:
        redis_client.sadd("par:tasks", current_task.request.id)
        redis_client.sadd("par:threads", threading.get_ident())
        time.sleep(1)
        return index * index

    @fanout.function("four-sleepers", retries=0)
    def four_sleepers(ctx):
        return ctx.step.parallel("group", [
            (lambda i=i: ctx.step.run(f"sleep{i}", slow, i)) for i in range(4)])

    with worker(app, concurrency=5):
        started = time.monotonic()
        run_id = fanout.invoke(four_sleepers)
        run = fanout.wait_for_run(run_id, timeout=20)
        elapsed = time.monotonic() - started

    assert run.status == "completed"
    assert run.output == [0, 1, 4, 9]
    # Not a speed goal (those live in bench/): proof that the branches overlapped, since
    # four 1 s branches one after another would take 4 s.
    assert elapsed < 3, f"four 1 s branches took {elapsed:.2f}s: they did not overlap"
    assert redis_client.scard("par:tasks") == 4
    assert redis_client.scard("par:threads") >= 2
    assert [s.id for s in run.steps] == ["group", "group[0]", "group[1]", "group[2]",
                                         "group[3]"]
    assert [s.output for s in run.steps[1:]] == [0, 1, 4, 9]


def test_a_failing_branch_is_retried_alone_without_re_running_other_steps(
        app, fanout: Fanout, worker, redis_client):
    def flaky(value: str) -> str:
        if redis_client.incr("par:b1") == 1:
            raise RuntimeError("first attempt of branch 1 fails")
        return value

    @fanout.function("flaky-branch", retries=FAST)
    def flaky_branch(ctx):
        before = ctx.step.run("before", counter(redis_client, "before"), "b")
        results = ctx.step.parallel("group", [
            lambda: ctx.step.run("b0", counter(redis_client, "b0"), "zero"),
            lambda: ctx.step.run("b1", flaky, "one"),
            lambda: ctx.step.run("b2", counter(redis_client, "b2"), "two"),
        ])
        after = ctx.step.run("after", counter(redis_client, "after"), "a")
        return [before, *results, after]

    with worker(app):
        run_id = fanout.invoke(flaky_branch)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == ["b", "zero", "one", "two", "a"]
    assert {name: count(redis_client, name) for name in ("before", "b0", "b1", "b2", "after")} \
        == {"before": 1, "b0": 1, "b1": 2, "b2": 1, "after": 1}
    # The retry happened inside the branch run; the parent saw one result per branch.
    branch = fanout.get_run(branch_run_id(run_id, "group", 1))
    assert branch is not None and branch.status == "completed"
    assert [(s.id, s.status, s.attempts) for s in branch.steps] == [("b1", "completed", 2)]
    assert step_of(run, "group[1]").status == "completed"


def test_a_branch_raising_outside_its_steps_retries_only_its_branch_run(
        app, fanout: Fanout, worker, redis_client):
    def shaky() -> str:
        if redis_client.incr("par:shaky") == 1:
            raise RuntimeError("the branch itself fails once")
        return "shaky"

    @fanout.function("shaky-branch", retries=FAST)
    def shaky_branch(ctx):
        ctx.step.run("before", counter(redis_client, "before"))
        return ctx.step.parallel("group", [
            lambda: ctx.step.run("b0", counter(redis_client, "b0"), "zero"),
            lambda: ctx.step.run("b1", counter(redis_client, "b1"), "one") + shaky(),
        ])

    with worker(app):
        run_id = fanout.invoke(shaky_branch)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == ["zero", "oneshaky"]
    assert run.attempt == 0  # the parent's handler never failed
    branch = fanout.get_run(branch_run_id(run_id, "group", 1))
    assert branch is not None and branch.attempt == 1
    assert {name: count(redis_client, name) for name in ("before", "b0", "b1", "shaky")} \
        == {"before": 1, "b0": 1, "b1": 1, "shaky": 2}


def test_the_logger_speaks_after_a_group_once_the_results_are_in(
        app, fanout: Fanout, worker, caplog):
    caplog.set_level(logging.INFO, logger="fanout.function.logged-group")

    @fanout.function("logged-group", retries=0)
    def logged_group(ctx):
        ctx.logger.info("before the group")
        results = ctx.step.parallel("group", [lambda: 1, lambda: 2, lambda: 3])
        ctx.logger.info("joined %s", results)
        return results

    with worker(app):
        run = fanout.wait_for_run(fanout.invoke(logged_group), timeout=20)

    assert run.status == "completed"
    messages = [r.getMessage() for r in caplog.records
                if r.name == "fanout.function.logged-group"]
    # The parent logs each line once; the branch runs replay the handler silently.
    assert messages == ["before the group", "joined [1, 2, 3]"]


def declare_doomed_group(fanout: Fanout, redis_client, function_id: str, catch: bool):
    def doomed() -> str:
        redis_client.incr("par:doomed")
        raise NonRetriableError("branch 1 cannot succeed")

    @fanout.function(function_id, retries=FAST)
    def doomed_group(ctx):
        try:
            ctx.step.parallel("group", [
                lambda: ctx.step.run("b0", counter(redis_client, "b0"), "zero"),
                lambda: ctx.step.run("b1", doomed),
                lambda: ctx.step.run("b2", counter(redis_client, "b2"), "two"),
            ])
        except StepError as exc:
            if not catch:
                raise
            failed = {"failed": exc.step_id, "type": exc.error["type"]}
            return ctx.step.run("recover", lambda: failed)
        return "unreachable"

    return doomed_group


def test_a_permanently_failing_branch_raises_a_catchable_step_error_in_the_parent(
        app, fanout: Fanout, worker, redis_client):
    doomed_group = declare_doomed_group(fanout, redis_client, "caught-branch", catch=True)

    with worker(app):
        run_id = fanout.invoke(doomed_group)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == {"failed": "group[1]", "type": "NonRetriableError"}
    assert count(redis_client, "doomed") == 1  # NonRetriableError: never retried
    # The other branches completed; their results stay on the parent's step table.
    assert step_of(run, "group[0]").output == "zero"
    assert step_of(run, "group[2]").output == "two"
    failed = step_of(run, "group[1]")
    assert failed.status == "failed" and failed.error["type"] == "NonRetriableError"
    assert count(redis_client, "b0") == count(redis_client, "b2") == 1


def test_an_uncaught_branch_failure_fails_the_run_naming_the_branch_step(
        app, fanout: Fanout, worker, redis_client):
    doomed_group = declare_doomed_group(fanout, redis_client, "uncaught-branch", catch=False)

    with worker(app):
        run_id = fanout.invoke(doomed_group)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "failed"
    assert run.error["step"] == "group[1]"
    assert run.error["type"] == "NonRetriableError"
    assert run.error["message"] == "branch 1 cannot succeed"
    branch = fanout.get_run(branch_run_id(run_id, "group", 1))
    assert branch is not None and branch.status == "failed"
    assert count(redis_client, "doomed") == 1


def test_a_group_resumes_after_its_worker_is_sigkilled_mid_group(
        redis_url: str, redis_client: redis.Redis, fanout: Fanout):
    with worker_process(redis_url, app=PARALLEL_APP, concurrency=4) as first:
        run_id = fanout.invoke("parallel-steps")
        for i in range(APP_BRANCHES):
            wait_for(lambda i=i: redis_client.smembers(app_in_branch(i)), 20,
                     f"branch {i} to be executing")
        wait_for(lambda: fanout.get_run(run_id).status == "waiting", 10,
                 "the parent to park until its branches join")
        first.kill()
    assert not first.alive()
    stranded = fanout.get_run(run_id)
    assert stranded is not None and stranded.status == "waiting"
    assert [s.id for s in stranded.steps] == ["before", "group"]

    with worker_process(redis_url, app=PARALLEL_APP, concurrency=4) as second:
        # Each branch run resumes through its lease expiring, in the new worker.
        for i in range(APP_BRANCHES):
            wait_for(lambda i=i: str(second.pid) in redis_client.smembers(app_in_branch(i)),
                     30, f"branch {i} to resume in the second worker")
        redis_client.set(APP_RELEASE, 1)
        done = fanout.wait_for_run(run_id, timeout=30)

    assert done.status == "completed"
    assert done.output == {"before": first.pid, "branches": [0, 10, 20],
                           "after": second.pid}
    assert int(redis_client.get(app_count("before"))) == 1
    assert int(redis_client.get(app_count("after"))) == 1
    # Each branch was executing (not checkpointed) when the worker died: it ran again once.
    assert [int(redis_client.get(app_count(f"branch{i}"))) for i in range(APP_BRANCHES)] \
        == [2] * APP_BRANCHES
    assert [s.id for s in done.steps] == ["before", "group", "group[0]", "group[1]",
                                          "group[2]", "after"]


def test_more_branches_than_the_step_limit_fail_the_run_with_too_many_steps(
        app, fanout: Fanout, worker):
    app.conf.fanout_max_steps = 5

    @fanout.function("too-wide", retries=FAST)
    def too_wide(ctx):
        return ctx.step.parallel("group", [(lambda i=i: i) for i in range(8)])

    with worker(app):
        run_id = fanout.invoke(too_wide)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "failed"
    assert run.attempt == 0  # failed at once, not retried
    assert run.error["type"] == "TooManyStepsError"
    assert "fanout_max_steps" in run.error["message"]
    assert "send_event" in run.error["message"]
    assert fanout.get_run(branch_run_id(run_id, "group", 0)) is None  # none was started


@pytest.mark.parametrize(("width", "status"), [(3, "completed"), (4, "failed")])
def test_a_group_counts_one_step_plus_one_per_branch_against_the_limit(
        app, fanout: Fanout, worker, width: int, status: str):
    app.conf.fanout_max_steps = 5

    @fanout.function("step-then-group", retries=0)
    def step_then_group(ctx):
        ctx.step.run("before", lambda: 0)
        return ctx.step.parallel("group", [(lambda i=i: i) for i in range(width)])

    with worker(app):
        run = fanout.wait_for_run(fanout.invoke(step_then_group), timeout=20)

    # 1 step + 1 group + 3 branches is exactly the limit of 5; a fourth branch is over it.
    assert run.status == status
    if status == "failed":
        assert run.error["type"] == "TooManyStepsError"
    else:
        assert run.output == list(range(width))


def test_a_group_nested_in_a_branch_fails_the_branch_without_starting_runs(
        app, fanout: Fanout, worker, redis_client):
    @fanout.function("nested-group", retries=FAST)
    def nested_group(ctx):
        ctx.step.run("before", counter(redis_client, "before"))
        return ctx.step.parallel("group", [
            lambda: ctx.step.parallel("inner", [lambda: 1, lambda: 2]),
            lambda: 3,
        ])

    with worker(app):
        run_id = fanout.invoke(nested_group)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "failed"
    assert run.error["step"] == "group[0]"
    assert run.error["type"] == "InvalidStepError"
    assert "cannot be nested" in run.error["message"]
    branch_id = branch_run_id(run_id, "group", 0)
    assert fanout.get_run(branch_run_id(branch_id, "inner", 0)) is None
    assert count(redis_client, "before") == 1


def test_consecutive_groups_reuse_step_ids_inside_their_branches(app, fanout: Fanout, worker,
                                                                 redis_client):
    @fanout.function("two-groups", retries=0)
    def two_groups(ctx):
        ctx.step.run("before", counter(redis_client, "before"))
        first = ctx.step.parallel("fetch", [
            (lambda i=i: ctx.step.run("work", counter(redis_client, f"fetch{i}"), i))
            for i in range(3)])
        second = ctx.step.parallel("fetch", [
            (lambda v=v: ctx.step.run("work", counter(redis_client, f"double{v}"), v * 2))
            for v in first])
        return [first, second]

    with worker(app):
        run_id = fanout.invoke(two_groups)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == [[0, 1, 2], [0, 2, 4]]
    # A repeated group id gets the implicit counter, like any step id.
    assert [s.id for s in run.steps] == [
        "before", "fetch", "fetch[0]", "fetch[1]", "fetch[2]",
        "fetch:1", "fetch:1[0]", "fetch:1[1]", "fetch:1[2]"]
    assert count(redis_client, "before") == 1
    assert [count(redis_client, f"fetch{i}") for i in range(3)] == [1, 1, 1]
    assert [count(redis_client, f"double{v}") for v in range(3)] == [1, 1, 1]
    branch = fanout.get_run(branch_run_id(run_id, "fetch:1", 2))
    assert branch is not None and [s.id for s in branch.steps] == ["work"]


def test_the_run_tree_shows_the_branch_runs_under_the_group_step(app, fanout: Fanout, worker):
    release = threading.Event()

    def held(value: str) -> str:
        release.wait(10)
        return value

    @fanout.function("tree-group", retries=0)
    def tree_group(ctx):
        ctx.step.run("before", lambda: 1)
        return ctx.step.parallel("group", [
            lambda: ctx.step.run("a", lambda: "a"),
            lambda: ctx.step.run("b", held, "b"),
            lambda: ctx.step.run("c", lambda: "c"),
        ])

    def branches_of(node):
        return [(kid.run.id, kid.run.parent_step_id, kid.run.status)
                for kid in node.children.get("group", [])]

    with worker(app):
        run_id = fanout.invoke(tree_group)
        expected_ids = [branch_run_id(run_id, "group", i) for i in range(3)]

        def two_joined():
            run = fanout.get_run(run_id)
            return run and len([s for s in run.steps if s.id.startswith("group[")]) == 2

        try:
            wait_for(two_joined, 20, "branches 0 and 2 to finish")
            # While branch 1 still runs, every branch is under the group.
            during = fanout.run_tree(run_id)
            assert during is not None
            assert branches_of(during) == [
                (expected_ids[0], "group[0]", "completed"),
                (expected_ids[1], "group[1]", "running"),
                (expected_ids[2], "group[2]", "completed")]
        finally:
            release.set()
        fanout.wait_for_run(run_id, timeout=20)

    tree = fanout.run_tree(run_id)
    assert tree is not None and tree.run.output == ["a", "b", "c"]
    assert branches_of(tree) == [(expected_ids[i], f"group[{i}]", "completed")
                                 for i in range(3)]
    assert [kid.run.steps[0].id for kid in tree.children["group"]] == ["a", "b", "c"]
    assert {r.id for r in tree.walk()} == {run_id, *expected_ids}
    lines = tree.format().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("├─ step group "))
    under = [line.lstrip("│ ") for line in lines[at + 1:at + 7]]
    assert [line.split()[:2] for line in under[::2]] == \
        [["tree-group", rid[:12]] for rid in expected_ids]
    assert [line.split()[:3] for line in under[1::2]] == \
        [["└─", "step", name] for name in ("a", "b", "c")]
