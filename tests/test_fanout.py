"""Event fan-out: one event to many functions, many events at once, de-duplication,
exactly-once ``step.send_event`` and run lineage.

Every test runs against a real Redis and a real in-process Celery worker.
"""

from __future__ import annotations

from support import wait_until

from fanout_celery import Event, RetryPolicy

FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)



def test_one_event_starts_a_run_of_every_subscribed_function(app, fanout, worker):
    @fanout.function(id="exact", event="app/user.created")
    def exact(ctx):
        return ctx.step.run("who", lambda: "exact")

    @fanout.function(id="listed", event=["app/other", "app/user.created"])
    def listed(ctx):
        return ctx.step.run("who", lambda: "listed")

    @fanout.function(id="wildcard", event="app/*")
    def wildcard(ctx):
        return ctx.step.run("who", lambda: "wildcard")

    @fanout.function(id="elsewhere", event="billing/*")
    def elsewhere(ctx):
        return "never"

    with worker(app):
        [event_id] = fanout.send(Event(name="app/user.created", data={"id": 7}))
        runs = fanout.runs_for_event(event_id)
        done = [fanout.wait_for_run(r.id, timeout=20) for r in runs]

    assert sorted(r.function_id for r in done) == ["exact", "listed", "wildcard"]
    assert all(r.status == "completed" for r in done)
    assert sorted(r.output for r in done) == ["exact", "listed", "wildcard"]
    assert all(r.event_ids == [event_id] for r in done)


def test_500_events_in_one_send_start_500_runs_each_exactly_once(app, fanout, worker,
                                                                  redis_client):
    @fanout.function(id="bulk", event="app/bulk")
    def bulk(ctx):
        def body():
            redis_client.incr("test:bulk:body")
            redis_client.sadd("test:bulk:items", ctx.event.data["i"])
            return ctx.event.data["i"]

        return ctx.step.run("count", body)

    events = [Event(name="app/bulk", data={"i": i}) for i in range(500)]
    with worker(app, concurrency=8):
        ids = fanout.send(events)
        wait_until(lambda: int(redis_client.get("test:bulk:body") or 0) >= 500)
        runs_per_event = [fanout.runs_for_event(eid) for eid in ids]
        done = [fanout.wait_for_run(runs[0].id, timeout=20) for runs in runs_per_event]

    assert len(ids) == len(set(ids)) == 500
    assert [len(runs) for runs in runs_per_event] == [1] * 500
    assert all(r.status == "completed" for r in done)
    assert len({r.id for r in done}) == 500
    assert redis_client.get("test:bulk:body") == "500"
    assert redis_client.scard("test:bulk:items") == 500


def test_the_same_event_id_sent_twice_starts_one_run(app, fanout, worker, redis_client):
    calls: list[int] = []

    @fanout.function(id="once", event="app/order.placed")
    def once(ctx):
        return ctx.step.run("charge", lambda: calls.append(1) or "charged")

    event = Event(name="app/order.placed", id="order-42", data={"total": 10})
    with worker(app):
        first = fanout.send(event)
        [run] = fanout.runs_for_event("order-42")
        fanout.wait_for_run(run.id, timeout=20)
        second = fanout.send(event)
        runs = fanout.runs_for_event("order-42")
        done = fanout.wait_for_run(run.id, timeout=20)

    assert first == second == ["order-42"]
    assert [r.id for r in runs] == [run.id]
    assert done.status == "completed"
    assert calls == [1]
    assert fanout.get_run(run.id).executions == 1


def test_a_handler_retried_after_send_event_does_not_send_again(app, fanout, worker):
    child_calls: list[int] = []
    sent: list[list[str]] = []

    @fanout.function(id="child", event="app/child")
    def child(ctx):
        return ctx.step.run("work", lambda: child_calls.append(ctx.event.data["n"]) or 1)

    @fanout.function(id="parent", retries=FAST)
    def parent(ctx):
        ids = ctx.step.send_event("fan", [Event(name="app/child", data={"n": n})
                                          for n in range(3)])
        sent.append(ids)
        if ctx.attempt == 0:
            raise RuntimeError("fails after sending")
        return ids

    with worker(app):
        run_id = fanout.invoke(parent)
        run = fanout.wait_for_run(run_id, timeout=20)
        children = [fanout.runs_for_event(eid) for eid in run.output]
        done = [fanout.wait_for_run(runs[0].id, timeout=20) for runs in children]

    assert run.status == "completed"
    assert run.attempt == 1
    assert len(sent) == 2 and sent[0] == sent[1] == run.output
    [fan] = run.steps
    assert (fan.id, fan.status, fan.attempts, fan.output) == ("fan", "completed", 1, sent[0])
    assert [len(runs) for runs in children] == [1, 1, 1]
    assert all(r.status == "completed" for r in done)
    assert sorted(child_calls) == [0, 1, 2]


def test_child_runs_record_their_parent_run_and_step(app, fanout, worker):
    @fanout.function(id="leaf", event="app/leaf")
    def leaf(ctx):
        return ctx.event.data["n"]

    @fanout.function(id="root")
    def root(ctx):
        ctx.step.run("prepare", lambda: None)
        return ctx.step.send_event("spawn", [Event(name="app/leaf", data={"n": n})
                                             for n in range(2)])

    with worker(app):
        run_id = fanout.invoke(root)
        run = fanout.wait_for_run(run_id, timeout=20)
        children = [fanout.wait_for_run(fanout.runs_for_event(eid)[0].id, timeout=20)
                    for eid in run.output]

    assert run.parent_run_id is None and run.parent_step_id is None
    assert sorted(c.output for c in children) == [0, 1]
    assert all(c.function_id == "leaf" for c in children)
    assert all(c.parent_run_id == run_id for c in children)
    assert all(c.parent_step_id == "spawn" for c in children)


def test_an_event_without_subscribers_is_stored_and_starts_nothing(app, fanout, state_client):
    @fanout.function(id="unrelated", event="app/unrelated")
    def unrelated(ctx):
        return None

    events = [Event(name="app/nobody.listens", data={"n": n}) for n in range(3)]
    ids = fanout.send(events)

    assert len(set(ids)) == 3
    for n, event_id in enumerate(ids):
        assert fanout.runs_for_event(event_id) == []
        stored = fanout.get_event(event_id)
        assert stored["name"] == "app/nobody.listens"
        assert stored["data"] == {"n": n}
    assert fanout.store.count("dispatch") == 0
    assert fanout.store.count("timers") == 0
    keys = fanout.store.keys
    pattern = f"{keys.prefix}:*run:*" if keys.sharded else keys.run("*")
    assert list(state_client.scan_iter(match=pattern)) == []
    assert fanout.store.function_run_ids(["unrelated"]) == []
