"""Two versions of one function, as two deploys of an app module would have them
(``FANOUT_TEST_DEPLOY_VERSION`` = 1 or 2), for ``tests/test_deploys.py``. Every step body
counts its executions in ``deploy:<run id>:<body>``.

Version 2, against version 1: adds a step before steps a run already completed
(``added``), removes one (``removed``), swaps two (``c`` before ``b``), renames one
(``d`` to ``d2``), changes a completed step behind ``patched("b-v2")``, and a step after
the sleep behind ``patched("new-pricing")``.
"""

from __future__ import annotations

import os
from typing import Any

from .base import worker_app

VERSION = int(os.environ.get("FANOUT_TEST_DEPLOY_VERSION", "1"))
app, fanout, r = worker_app("deploy_app")


def body(run_id: str, name: str) -> str:
    r.incr(f"deploy:{run_id}:{name}")
    return f"{name}@v{VERSION}"


@fanout.function("deploy", event="deploy/start", retries=0)
def deploy(ctx: Any) -> dict[str, Any]:
    rid = ctx.run_id
    step = ctx.step.run
    out: dict[str, Any] = {}
    if VERSION == 1:
        out["a"] = step("a", body, rid, "a")
        out["removed"] = step("removed", body, rid, "removed")
        out["b"] = step("b", body, rid, "b")
        out["c"] = step("c", body, rid, "c")
        out["d"] = step("d", body, rid, "d")
        ctx.step.sleep("nap", float(ctx.event.data["seconds"]))
        out["price"] = step("price", body, rid, "price-v1")
        return out
    out["added"] = step("added", body, rid, "added")
    out["a"] = step("a", body, rid, "a")
    out["c"] = step("c", body, rid, "c")
    if ctx.step.patched("b-v2"):
        out["b"] = step("b2", body, rid, "b2")
    else:
        out["b"] = step("b", body, rid, "b")
    out["d"] = step("d2", body, rid, "d2")
    ctx.step.sleep("nap", float(ctx.event.data["seconds"]))
    if ctx.step.patched("new-pricing"):
        out["price"] = step("price-v2", body, rid, "price-v2")
    else:
        out["price"] = step("price", body, rid, "price-v1")
    return out
