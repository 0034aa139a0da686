"""The shop's web app: FastAPI handlers that send events and await runs with fanout's
async API, so a slow Redis or broker delays the request that uses it, never the others.

It declares no functions: it starts runs of the functions its workers publish.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fanout_celery import (
    Event,
    Fanout,
    FanoutError,
    InvalidEventError,
    RunTimeoutError,
    UnknownFunctionError,
)


class Order(BaseModel):
    order_id: str
    items: dict[str, int]


class Quote(BaseModel):
    items: dict[str, int]


def create_app(fanout: Fanout) -> FastAPI:
    """The web app, sending through ``fanout``."""
    web = FastAPI(title="shop")

    @web.post("/orders", status_code=202)
    async def place_order(order: Order) -> dict[str, str]:
        # The event id derives from the order: a retried request starts no second run.
        [event_id] = await fanout.asend(Event(name="shop/order.placed",
                                              data=order.model_dump(),
                                              id=f"order-{order.order_id}"))
        return {"event_id": event_id}

    @web.post("/orders/{order_id}/payment", status_code=202)
    async def pay(order_id: str) -> dict[str, str]:
        [event_id] = await fanout.asend(Event(name="shop/order.paid",
                                              data={"order_id": order_id}))
        return {"event_id": event_id}

    @web.post("/quotes")
    async def quote(body: Quote) -> Any:
        run_id = await fanout.ainvoke("price-quote", {"items": body.items})
        run = await fanout.await_run(run_id, timeout=10)
        if run.status != "completed":
            raise HTTPException(502, f"quote {run.status}: {(run.error or {}).get('message')}")
        return run.output

    @web.get("/runs/{run_id}")
    async def get_run(run_id: str) -> dict[str, Any]:
        run = await fanout.aget_run(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id}")
        return {"id": run.id, "function": run.function_id, "status": run.status,
                "output": run.output}

    @web.delete("/runs/{run_id}")
    async def cancel_run(run_id: str) -> dict[str, str]:
        return {"outcome": await fanout.acancel(run_id, "cancelled from the shop")}

    @web.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @web.exception_handler(FanoutError)
    async def fanout_error(request: Any, exc: FanoutError) -> JSONResponse:
        status = 422 if isinstance(exc, InvalidEventError) else \
            404 if isinstance(exc, UnknownFunctionError) else \
            504 if isinstance(exc, RunTimeoutError) else 500
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=status)

    return web


def default_fanout() -> Fanout:
    url = os.environ.get("FANOUT_REDIS_URL", "").strip() or "redis://localhost:6379/0"
    return Fanout(Celery("shop-web", broker=url, set_as_current=False))


app = create_app(default_fanout())
