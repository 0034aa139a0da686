"""What the runtime needs from the layers below, as small protocols.

- ``Effects``: what an execution may do outside its own run (send events, start a child
  run or branch runs, report its end). The engine implements it; the testing kit
  captures it.
- ``LeaseHolder``: keeps an executing run's lease alive (a thread renews it).
- ``StepBody``: how a ``step.run`` body is called (the testing kit stubs bodies here).

The run's own state goes through the store port (``store/port.py``), by way of the
execution's ``Journal``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..model.definition import Subscription
from ..store.port import SlotSet


@dataclass(slots=True)
class StepCall:
    """A step about to run its body: the step key (with its ``:N`` counter), the id the
    handler gave, and the 0-based attempt."""

    key: str
    step_id: str
    attempt: int


# Calls ``body()`` for ``call`` and returns its value (or raises its error).
StepBody = Callable[[StepCall, Callable[[], Any]], Any]


def call_body(call: StepCall, body: Callable[[], Any]) -> Any:
    """The production ``StepBody``: just call it."""
    return body()


class Effects(Protocol):
    """An execution's effects outside its run."""

    def subscription(self, function_id: Any) -> Subscription | None:
        """The subscription of a function declared here or published elsewhere."""

    def prepare_events(self, events: Any, *, ctx: Any,
                       id_for: Callable[[int], str]) -> list[dict[str, Any]]:
        """Validate events a step sends (``id_for(i)``: the id of an event without one);
        nothing is written."""

    def stream_events(self, events: Any, *, ctx: Any, id_for: Callable[[int], str],
                      start: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """A stream of events a step sends, validated one chunk at a time from its event
        ``start`` on: ``(events read so far, records)``; nothing is written."""

    def send_events(self, records: Sequence[dict[str, Any]], *,
                    parent: tuple[str, str]) -> None:
        """Send events ``prepare_events`` returned, linked to the sending step."""

    def hold(self, function_id: str, run_id: str) -> None:
        """Keep a run of a paused function for its resume."""

    def start_child(self, sub: Subscription, event: dict[str, Any], *,
                    parent: tuple[str, str], ctx: Any) -> None:
        """Start (once) the child run of an ``invoke`` step."""

    def start_branches(self, parent_id: str, parent: dict[str, str], key: str, n: int) -> None:
        """Create (once) and start the branch runs of a ``parallel`` group."""

    def resolve_waits(self, name: str, waiters: dict[str, str],
                      events: Sequence[dict[str, Any]]) -> None:
        """Resolve waiters with events that arrived just before they registered."""

    def run_ended(self, run_id: str, run: dict[str, str], outcome: dict[str, Any]) -> None:
        """The run is about to be final: resolve its parent, release its keys."""

    def enqueue_woken(self, run_ids: Sequence[str]) -> None:
        """Publish runs that a freed concurrency slot woke."""

    def announce(self, event: dict[str, Any], parent: tuple[str, str]) -> None:
        """Send a lifecycle event (``fanout/function.finished`` ...)."""


class LeaseHolder(Protocol):
    """Keeps the leases (and concurrency slots) of executing runs alive."""

    def hold(self, run_id: str, token: str, slots: Sequence[SlotSet] = ()) -> None: ...

    def release(self, run_id: str) -> None: ...
