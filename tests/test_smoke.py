from fanout_celery import Event


def test_a_run_completes_with_memoized_steps(app, fanout, worker):
    calls = []

    @fanout.function(id="hello", event="app/hello")
    def hello(ctx):
        a = ctx.step.run("a", lambda: calls.append("a") or 1)
        b = ctx.step.run("b", lambda: calls.append("b") or a + 1)
        return {"sum": a + b}

    with worker(app):
        [event_id] = fanout.send(Event(name="app/hello"))
        [run] = fanout.runs_for_event(event_id)
        done = fanout.wait_for_run(run.id, timeout=20)
    assert done.status == "completed"
    assert done.output == {"sum": 3}
    assert calls == ["a", "b"]
    assert [s.id for s in done.steps] == ["a", "b"]
