"""What a worker checks at start about the Redis of run state and the Celery app."""

from __future__ import annotations

import logging
from typing import Any

from ..store.port import Store

logger = logging.getLogger("fanout")

UNSAFE_CONTENT = {"pickle", "application/x-python-serialize", "yaml", "application/x-yaml"}


def check_redis(app: Any, store: Store) -> list[str]:
    """Problems with the Redis that holds run state, as messages (also logged): an
    eviction policy that may drop live run keys, an app accepting pickle."""
    problems = []
    policy = store.server_info().get("maxmemory_policy", "")
    if policy.startswith("allkeys"):
        problems.append(
            f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis may evict "
            "the keys of live runs and lose them; use 'noeviction' (or 'volatile-*', "
            "which only evicts finished runs and old events)")
    accept = {str(c).lower() for c in (app.conf.accept_content or [])}
    if accept & UNSAFE_CONTENT:
        problems.append(
            "accept_content allows pickle or yaml: workers decode such messages before "
            "any task sees them; fanout functions refuse non-JSON messages, but keep "
            "accept_content=['json'] so nothing untrusted is unpickled")
    for problem in problems:
        logger.warning("fanout: %s", problem)
    return problems
