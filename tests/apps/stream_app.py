"""The worker app of the streaming fan-out tests (``tests/test_streaming.py``).

``stream-parent`` sends ``n`` events from a generator with ``step.send_event``; on its
first attempt the generator SIGKILLs its own pool process after ``kill_after`` events
were read (once: ``stream:killed``). Each ``stream-child`` run counts its executions per
event index in ``stream:child:<i>``, so a child started twice cannot hide.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

from .base import worker_app

# A child's message that the killed process held (prefork hands tasks to its processes
# ahead) comes back through the dispatch cover: after 10 s here, not the default 300 s.
app, fanout, r = worker_app("stream_app", fanout_redispatch_seconds=10)


def users(n: int, kill_after: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        if i == kill_after and r.set("stream:killed", os.getpid(), nx=True):
            os.kill(os.getpid(), signal.SIGKILL)
        r.incr("stream:read")
        yield {"name": "stream/user", "data": {"i": i}}


@fanout.function("stream-parent", event="stream/start", retries=0)
def stream_parent(ctx: Any) -> int:
    data = ctx.event.data
    sent = ctx.step.send_event("emails", users(data["n"], data.get("kill_after", -1)))
    return len(sent)


@fanout.function("stream-child", event="stream/user")
def stream_child(ctx: Any) -> None:
    r.incr(f"stream:child:{ctx.event.data['i']}")
