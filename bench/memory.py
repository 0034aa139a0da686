"""Figure 6: Redis memory per stored event and per completed run."""

from __future__ import annotations

import time

from celery import group

from .harness import Bench, count


def _bytes(value: float) -> str:
    return f"{value:,.0f} B"


def fig_memory(b: Bench) -> None:
    n = b.sizes.events
    retention = b.fanout.settings.retention
    b.header(f"6. Redis memory with the default retention ({retention / 86400:g} days for "
             "runs and events): INFO used_memory delta / count, after the runs completed")
    # Events that start nothing: what an event costs on its own.
    before = b.state.snapshot()["used_memory"]
    for start in range(0, n, 1000):
        b.fanout.send([{"name": "bench/nobody", "data": {"i": i}}
                       for i in range(start, min(n, start + 1000))])
    per_event = (b.state.snapshot()["used_memory"] - before) / n
    b.say(f"  per event (no subscriber, {count(n)} events, data {{'i': int}}): "
          f"{_bytes(per_event)}")
    b.row("6", "state memory per event", _bytes(per_event), "0")

    # Plain Celery keeps nothing once a task ran, unless it stores its result.
    from .app import plain_result

    runs = b.sizes.results
    tag = b.tag()
    before = b.broker.snapshot()["used_memory"]
    group(plain_result.s(i, tag) for i in range(runs)).apply_async()
    b.wait_done(tag, runs, timeout=60 + runs * 0.1)
    time.sleep(0.2)  # the last results are written just after the counter
    per_result = (b.broker.snapshot()["used_memory"] - before) / runs
    expires = b.app.conf.result_expires
    expires = f"{expires.total_seconds() / 3600:g} h" if hasattr(expires, "total_seconds") \
        else f"{expires} s"
    b.say(f"  plain Celery with the Redis result backend: {_bytes(per_result)} per stored "
          f"result ({count(runs)} tasks, kept for result_expires = {expires}); "
          "without a backend: 0")
    b.row("6", "memory per stored result (plain)", "", _bytes(per_result))

    for note, label in (("steps_memory", "per completed run, 10 steps (figure 2)"),
                        ("example_memory", "per completed run, weekly email (figure 5)")):
        if note in b.notes:
            per_run = b.notes[note]
            b.say(f"  {label}: {_bytes(per_run)}, of which about {_bytes(per_event)} is its "
                  "trigger event")
            b.row("6", f"state memory {label}", _bytes(per_run), _bytes(per_result),
                  f"{per_run / per_result:.1f}x" if per_result > 0 else "")
            kept = b.notes.get(f"{note}_kept")
            if kept is not None:
                b.say(f"    kept for the retention (once its done notice and its event's "
                      f"entry among the recent events have expired): {_bytes(kept)}")
                for label, (size, encoding) in b.notes.get(f"{note}_keys", {}).items():
                    b.say(f"      {label}: {_bytes(size)} ({encoding})")
                b.row("6", "  the same, kept for the retention", _bytes(kept),
                      _bytes(per_result), f"{kept / per_result:.1f}x" if per_result > 0 else "",
                      "<= 2,000 B", kept <= 2000)
        else:
            b.say(f"  {label}: not measured (run that figure too)")
