"""What every execution of every run needs, built once per ``Fanout``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.admission import Admission
from ..model.events import now_ms
from ..model.middleware import Chain
from ..model.settings import Settings
from ..model.typed import EventType
from ..store.port import Store
from .ports import Effects, LeaseHolder, StepBody, call_body


@dataclass
class Services:
    """The store, the effects port, flow control's gate, the lease keeper, settings,
    middleware and event types; ``body`` calls step bodies and ``clock`` tells the time
    (epoch ms) — the testing kit replaces both."""

    store: Store
    effects: Effects
    admission: Admission
    leases: LeaseHolder
    settings: Settings
    middleware: Chain
    event_types: Mapping[str, EventType[Any]]
    body: StepBody = call_body
    clock: Callable[[], int] = now_ms
    # Told (run id, function id, executions) when an attempt takes a run's lease: the
    # Celery integration fires its run_started signal.
    on_start: Callable[[str, str, int], None] | None = None
    # How a function is paused ("hold", "skip") or None: read before a run starts and at
    # each step boundary (cached by the engine; the testing kit never pauses).
    paused: Callable[[str], str | None] = lambda function_id: None
