"""fanout's async API from an async web app: the FastAPI example
(``example_project/fastapi_app``) driven through an ASGI client, with its functions on a
real in-process worker and a real Redis.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from procs import wait_for
from proxy import SwitchableProxy
from support import STATE_MODE

from example_project.fastapi_app.web import create_app
from example_project.fastapi_app.worker import make_app
from fanout_celery import Fanout, RunTimeoutError
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration


@pytest.fixture
def shop(redis_url: str, worker: Any) -> Iterator[Fanout]:
    """The shop's worker app on a real in-process worker; yields its Fanout."""
    app, fanout = make_app(redis_url)
    with worker(app):
        fanout.publish_subscriptions()
        yield fanout
    app.close()


@pytest.fixture
def web_fanout(redis_url: str) -> Iterator[Fanout]:
    """The web app's Fanout: it declares no functions."""
    app = Celery("shop-web", broker=redis_url, set_as_current=False)
    yield Fanout(app)
    app.close()


def client(fanout: Fanout) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(fanout)),
                             base_url="http://shop")


def blocked_in(state_client: Any, command: str) -> int:
    """How many clients of the state's server (every master of a cluster) are blocked in
    ``command`` right now."""
    if isinstance(state_client, redis.RedisCluster):
        clients = [c for node in state_client.get_primaries()
                   for c in state_client.client_list(target_nodes=node)]
    else:
        clients = state_client.client_list()
    return sum(1 for c in clients if c.get("cmd") == command and "b" in c.get("flags", ""))


async def until_status(fanout: Fanout, run_id: str, status: str,
                       timeout: float = 10.0) -> None:
    """Poll (the run's state has no notice for "parked") until the run is in ``status``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (run := await fanout.aget_run(run_id)) is None or run.status != status:
        assert asyncio.get_running_loop().time() < deadline, f"{run_id} never {status}: {run}"
        await asyncio.sleep(0.02)


def test_the_shop_quotes_orders_and_cancels_through_the_async_api(shop, web_fanout):
    async def scenario() -> None:
        async with client(web_fanout) as http:
            quote = await http.post("/quotes", json={"items": {"tea": 4, "cake": 6}})
            assert quote.status_code == 200, quote.text
            assert quote.json() == {"items": {"tea": 4, "cake": 6}, "total": 32.4}

            placed = await http.post("/orders", json={"order_id": "o-1", "items": {"tea": 1}})
            assert placed.status_code == 202
            run_id = derived_id("fulfil-order", placed.json()["event_id"])
            # The same order again (a retried request) starts no second run.
            again = await http.post("/orders", json={"order_id": "o-1", "items": {"tea": 1}})
            assert again.json() == placed.json()

            await until_status(web_fanout, run_id, "waiting")
            paid = await http.post("/orders/o-1/payment")
            assert paid.status_code == 202
            done = await web_fanout.await_run(run_id, timeout=15)
            assert (done.status, done.output) == ("completed", {"order_id": "o-1",
                                                                "paid": True})
            view = await http.get(f"/runs/{run_id}")
            assert view.json() == {"id": run_id, "function": "fulfil-order",
                                   "status": "completed", "output": done.output}

            other = await http.post("/orders", json={"order_id": "o-2", "items": {"cake": 2}})
            other_id = derived_id("fulfil-order", other.json()["event_id"])
            await until_status(web_fanout, other_id, "waiting")
            cancelled = await http.delete(f"/runs/{other_id}")
            assert cancelled.json() == {"outcome": "cancelled"}
            assert (await web_fanout.await_run(other_id, timeout=5)).status == "cancelled"

            assert (await http.get("/runs/0123456789abcdef")).status_code == 404
            bad = await http.post("/orders", json={"order_id": "o 3!", "items": {}})
            assert bad.status_code == 422 and "InvalidEventError" in bad.text

    asyncio.run(scenario())


@pytest.mark.skipif(STATE_MODE == "cluster", reason="stalls the one Redis behind a proxy: "
                    "the state's cluster has no such proxy")
def test_asend_leaves_the_event_loop_free_while_redis_stalls(redis_server, shop):
    # The web app reaches Redis (state and broker) through a proxy that the test stalls: a
    # health check sent while an order's send is stuck answers at once, and the order
    # goes through when Redis answers again.
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    proxy = SwitchableProxy(port)
    app = Celery("shop-web", broker=proxy.url, set_as_current=False)
    fanout = Fanout(app)

    async def scenario() -> None:
        async with client(fanout) as http:
            warm = await http.post("/orders", json={"order_id": "warm", "items": {"tea": 1}})
            assert warm.status_code == 202  # connections made, scripts loaded
            proxy.stall()
            order = asyncio.create_task(
                http.post("/orders", json={"order_id": "o-9", "items": {"tea": 1}}))
            while proxy.held == 0:  # until the order's send is stuck on Redis
                await asyncio.sleep(0.01)
            health = await asyncio.wait_for(http.get("/health"), timeout=5)
            assert health.json() == {"ok": True}
            assert not order.done()  # Redis has not answered it yet
            proxy.resume()
            placed = await asyncio.wait_for(order, timeout=15)
            assert placed.status_code == 202

    try:
        asyncio.run(scenario())
    finally:
        proxy.resume()
        app.close()
        proxy.close()
    run_id = derived_id("fulfil-order", "order-o-9")
    assert shop.get_run(run_id) is not None


def test_await_run_blocks_on_redis_without_a_thread_per_waiter(shop, web_fanout,
                                                              state_client):
    event_ids = web_fanout.send([{"name": "shop/order.placed",
                                  "data": {"order_id": f"w-{n}", "items": {"tea": 1}}}
                                 for n in range(20)])
    run_ids = [derived_id("fulfil-order", eid) for eid in event_ids]

    async def scenario() -> None:
        for run_id in run_ids:
            await until_status(web_fanout, run_id, "waiting")
        threads = threading.active_count()
        waiters = [asyncio.create_task(web_fanout.await_run(rid, timeout=30))
                   for rid in run_ids]
        # Every waiter is blocked in Redis (not sleeping between polls), and none took a
        # thread of this process.
        deadline = asyncio.get_running_loop().time() + 10
        while blocked_in(state_client, "blmove") < len(run_ids):
            assert asyncio.get_running_loop().time() < deadline, "waiters not blocked"
            await asyncio.sleep(0.02)
        assert threading.active_count() == threads
        assert not any(w.done() for w in waiters)
        await web_fanout.asend([{"name": "shop/order.paid", "data": {"order_id": f"w-{n}"}}
                                for n in range(20)])
        done = await asyncio.wait_for(asyncio.gather(*waiters), timeout=30)
        assert [run.status for run in done] == ["completed"] * 20

    asyncio.run(scenario())


def test_wait_for_run_blocks_on_redis_and_await_run_times_out_typed(shop, web_fanout,
                                                                   state_client):
    [event_id] = web_fanout.send({"name": "shop/order.placed",
                                  "data": {"order_id": "slow", "items": {"tea": 1}}})
    run_id = derived_id("fulfil-order", event_id)
    result: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: result.update(run=web_fanout.wait_for_run(
        run_id, timeout=30)))
    waiter.start()
    try:
        # The sync waiter is blocked in Redis, not sleeping between polls.
        wait_for(lambda: blocked_in(state_client, "blmove") == 1, 10, "the waiter to block")
        with pytest.raises(RunTimeoutError, match=f"run {run_id} still"):
            asyncio.run(web_fanout.await_run(run_id, timeout=0.3))
    finally:
        web_fanout.send({"name": "shop/order.paid", "data": {"order_id": "slow"}})
        waiter.join(30)
    assert result["run"].status == "completed"
