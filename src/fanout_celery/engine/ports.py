"""What the engine needs from the world outside Redis: a broker to publish run messages.

The Celery integration implements it (``integration/publisher.py``); the testing kit
captures messages instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..model.records import RunMessage


class Broker(Protocol):
    """Puts run task messages on the broker."""

    def publish(self, messages: Sequence[RunMessage]) -> None:
        """Publish each run's task message (batched where the broker allows)."""

    def context(self) -> dict[str, str]:
        """Fields to record on runs created now: the broker task this process is
        executing, if any (``parent_task``, ``root_task``)."""
