"""What a run's execution may do outside itself, as the runtime's ``Effects`` port
(``runtime/ports.py``) describes it: send events, start a child or branch runs, report
its end."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..model.definition import Subscription
from .dispatcher import Dispatcher
from .router import Router
from .sending import Sender


class EngineEffects:
    """The engine's implementation of ``runtime.ports.Effects``."""

    def __init__(self, sender: Sender, dispatcher: Dispatcher, router: Router) -> None:
        self.sender = sender
        self.dispatcher = dispatcher
        self.router = router

    def subscription(self, function_id: Any) -> Subscription | None:
        return self.router.get(function_id)

    def prepare_events(self, events: Any, *, ctx: Any,
                       id_for: Callable[[int], str]) -> list[dict[str, Any]]:
        return self.sender.prepare(events, ctx=ctx, id_for=id_for)

    def stream_events(self, events: Any, *, ctx: Any, id_for: Callable[[int], str],
                      start: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        return self.sender.stream(events, ctx=ctx, id_for=id_for, start=start)

    def hold(self, function_id: str, run_id: str) -> None:
        self.dispatcher.store.hold(function_id, run_id)

    def send_events(self, records: Sequence[dict[str, Any]], *,
                    parent: tuple[str, str]) -> None:
        self.dispatcher.dispatch(records, parent=parent)

    def start_child(self, sub: Subscription, event: dict[str, Any], *,
                    parent: tuple[str, str], ctx: Any) -> None:
        self.sender.start(sub, event, parent=parent, ctx=ctx, notify_parent=True)

    def start_branches(self, parent_id: str, parent: dict[str, str], key: str, n: int) -> None:
        self.dispatcher.start_branches(parent_id, parent, key, n)

    def resolve_waits(self, name: str, waiters: dict[str, str],
                      events: Sequence[dict[str, Any]]) -> None:
        self.dispatcher.lifecycle.resolve_waits(name, waiters, events)

    def run_ended(self, run_id: str, run: dict[str, str], outcome: dict[str, Any]) -> None:
        self.dispatcher.lifecycle.run_ended(run_id, run, outcome)

    def enqueue_woken(self, run_ids: Sequence[str]) -> None:
        self.dispatcher.enqueue(run_ids)

    def announce(self, event: dict[str, Any], parent: tuple[str, str]) -> None:
        self.dispatcher.send_system(event, parent)
