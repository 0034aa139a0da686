"""Streaming fan-out: ``fanout.send`` and ``step.send_event`` of an iterator, sent in
chunks without holding the stream, on a real Redis and real workers; a worker process
killed in the middle of a stream resumes it and each event starts its run once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from procs import wait_for, worker_process
from support import wait_until

from fanout_celery import Event, Fanout, InvalidEventError, StreamedIds
from fanout_celery.model.events import STREAM_CHUNK, derived_id

pytestmark = pytest.mark.integration


def generated(n: int, name: str = "app/streamed", bad_at: int = -1) -> Iterator[Any]:
    for i in range(n):
        yield {"name": "no spaces allowed" if i == bad_at else name, "data": {"i": i}}


def test_send_of_a_generator_starts_a_run_per_event(app: Any, fanout: Fanout,
                                                    worker: Any) -> None:
    seen: list[int] = []

    @fanout.function("streamed", event="app/streamed")
    def streamed(ctx: Any) -> None:
        seen.append(ctx.event.data["i"])

    n = 2 * STREAM_CHUNK + 37
    with worker(app):
        ids = fanout.send(generated(n))
        assert len(ids) == len(set(ids)) == n
        runs = [fanout.wait_for_run(derived_id("streamed", eid), 30) for eid in ids[::97]]
        wait_until(lambda: len(seen) >= n, 60)
    assert {r.status for r in runs} == {"completed"}
    assert sorted(seen) == list(range(n))


def test_a_bad_event_stops_a_stream_at_its_chunk(fanout: Fanout) -> None:
    @fanout.function("streamed", event="app/streamed")
    def streamed(ctx: Any) -> None:
        return None

    bad_at = STREAM_CHUNK + 3
    with pytest.raises(InvalidEventError,
                       match=f"from event #{STREAM_CHUNK}: event #3 .* the {STREAM_CHUNK} "
                             "events before it were sent"):
        fanout.send(generated(3 * STREAM_CHUNK, bad_at=bad_at))
    assert fanout.store.count("dispatch") == STREAM_CHUNK  # the first chunk only


def test_send_event_of_a_generator_streams_and_replays_as_derived_ids(
        app: Any, fanout: Fanout, worker: Any) -> None:
    children: list[str] = []

    @fanout.function("parent", event="app/parent")
    def parent(ctx: Any) -> dict[str, Any]:
        sent = ctx.step.send_event("fan", generated(STREAM_CHUNK + 10, "app/child"))
        ctx.step.sleep("then", 0.05)  # a second attempt replays the stream's step
        return {"n": len(sent), "first": sent[0], "last": sent[-1],
                "type": type(sent).__name__}

    @fanout.function("child", event="app/child")
    def child(ctx: Any) -> None:
        children.append(ctx.event.id)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/parent"))
        run = fanout.wait_for_run(derived_id("parent", event_id), 30)
        wait_until(lambda: len(children) >= STREAM_CHUNK + 10, 30)
    assert run.status == "completed"
    expected = StreamedIds(run.id, "fan", STREAM_CHUNK + 10)
    assert run.output == {"n": STREAM_CHUNK + 10, "first": expected[0],
                          "last": expected[-1], "type": "StreamedIds"}
    assert sorted(children) == sorted(expected)
    [fan, _] = run.steps
    assert fan.output == {"streamed": STREAM_CHUNK + 10}


@pytest.mark.chaos
def test_a_pool_process_killed_mid_stream_resumes_and_starts_each_run_once(
        redis_url: str, redis_client: Any) -> None:
    n, kill_after = 5 * STREAM_CHUNK, 2 * STREAM_CHUNK + 100
    from celery import Celery

    app = Celery("stream-sender", broker=redis_url, set_as_current=False)
    app.conf.update(result_backend=None, task_default_queue="celery")
    sender = Fanout(app)
    try:
        with worker_process(redis_url, app="tests.apps.stream_app", pool="prefork",
                            concurrency=2):
            [event_id] = sender.send({"name": "stream/start",
                                      "data": {"n": n, "kill_after": kill_after}})
            run = sender.wait_for_run(derived_id("stream-parent", event_id), 90)
            wait_for(lambda: sum(1 for _ in redis_client.scan_iter("stream:child:*")) >= n,
                     90, "every child to run")
            counts = [int(redis_client.get(f"stream:child:{i}") or 0) for i in range(n)]
            read = int(redis_client.get("stream:read") or 0)
    finally:
        app.close()
    assert redis_client.get("stream:killed")  # the fault happened
    assert run.status == "completed" and run.output == n
    assert run.executions == 2
    assert counts == [1] * n, [i for i, c in enumerate(counts) if c != 1][:10]
    # The killed attempt read kill_after events; the resumed one read the stream from its
    # start (skipping, unsent, the chunks its record counted) to its end.
    assert read == n + kill_after
    [fan] = run.steps
    assert fan.output == {"streamed": n} and fan.status == "completed"
