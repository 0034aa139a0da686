"""Pausing a function: while paused, no run of it starts or goes on past a step boundary.

``hold`` (the default): runs that start while the function is paused, new or resuming,
are parked ``paused`` and kept in the function's held set; ``resume`` publishes them, and
they go on from their last step. ``skip``: new runs are skipped instead (runs already
under way are held all the same). Workers read the pauses at most once a second, so a
pause takes effect within about a second plus the step that is executing. Cron slots of a
paused function do not fire; on resume its missed-slot policy decides what runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import ConfigurationError
from ..store.port import Store
from .dispatcher import Dispatcher
from .router import Router

MODES = ("hold", "skip")
REFRESH_SECONDS = 1.0


class Pauses:
    """The pauses of an app's functions, cached for a second."""

    def __init__(self, store: Store, dispatcher: Dispatcher, router: Router,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.router = router
        self.clock = clock
        self._cache: dict[str, str] = {}
        self._read_at = float("-inf")

    def all(self) -> dict[str, str]:
        if self.clock() - self._read_at > REFRESH_SECONDS:
            self._cache = self.store.paused()
            self._read_at = self.clock()
        return self._cache

    def mode(self, function_id: str) -> str | None:
        return self.all().get(function_id)

    def pause(self, function_id: str, mode: str = "hold") -> None:
        if mode not in MODES:
            raise ConfigurationError(f"pause mode must be one of {', '.join(MODES)}, "
                                     f"not {mode!r}")
        self.store.set_paused(function_id, mode)
        self._read_at = float("-inf")

    def resume(self, function_id: str) -> int:
        """Resume the function and publish its held runs; returns how many."""
        self.store.set_paused(function_id, None)
        self._read_at = float("-inf")
        return self.dispatcher.enqueue(self.store.take_held(function_id))

    def sweep(self) -> int:
        """Publish runs held for functions no longer paused (a worker that read the pause
        a moment late held them after the resume took the set)."""
        paused = self.store.paused()
        return sum(self.dispatcher.enqueue(self.store.take_held(fid))
                   for fid in self.router.all() if fid not in paused)
