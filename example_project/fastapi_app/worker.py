"""The shop's Celery app and its functions: what ``celery worker`` runs.

``shop/order.placed`` starts ``fulfil-order`` (reserve the stock, then wait for the
payment event); ``price-quote`` is invoked by the web app, which awaits its answer.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from fanout_celery import Context, Fanout

PRICES = {"tea": 4.5, "cake": 3.0, "scone": 2.5}


def make_app(redis_url: str) -> tuple[Celery, Fanout]:
    """The shop's worker app on ``redis_url`` (broker and fanout state), its functions
    declared."""
    app = Celery("shop", broker=redis_url, set_as_current=False)
    app.conf.update(result_backend=None, broker_connection_retry_on_startup=True)
    fanout = Fanout(app)
    fanout.function("price-quote", retries=2)(price_quote)
    fanout.function("fulfil-order", event="shop/order.placed", retries=3)(fulfil_order)
    return app, fanout


def price_quote(ctx: Context) -> dict[str, Any]:
    """The price of ``items`` (name -> quantity), with 10 % off from 10 items."""
    items: dict[str, int] = ctx.event.data["items"]
    subtotal = ctx.step.run("price-items", lambda: sum(PRICES[n] * q for n, q in items.items()))
    discount = 0.1 if sum(items.values()) >= 10 else 0.0
    return {"items": items, "total": round(subtotal * (1 - discount), 2)}


def fulfil_order(ctx: Context) -> dict[str, Any]:
    """Reserve the order's stock, then wait (up to an hour) for its payment."""
    order_id = ctx.event.data["order_id"]
    ctx.step.run("reserve-stock", lambda: {"order_id": order_id, "reserved": True})
    paid = ctx.step.wait_for_event("payment", event="shop/order.paid",
                                   match="data.order_id", timeout="1h")
    return {"order_id": order_id, "paid": paid is not None}


app, fanout = make_app(os.environ.get("FANOUT_REDIS_URL", "").strip()
                       or "redis://localhost:6379/0")
