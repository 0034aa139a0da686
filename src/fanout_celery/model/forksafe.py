"""Locks that a forked child process finds released.

Celery's prefork pool forks its children from a worker that runs threads of its own (the
pump among them). A ``threading.Lock`` that one of those threads holds at the instant of
the fork stays locked for ever in the child, which has no such thread to release it: the
child's first use of the lock hangs (while its lease keeper, a thread started in the
child, renews the run's lease, so the run never comes back either). Each lock here is
replaced by a new, released one in the child, right after the fork.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

_locks: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


class ForkSafeLock:
    """A ``threading.Lock`` (or ``RLock``, from ``factory``) re-created in a forked child."""

    def __init__(self, factory: Callable[[], Any] = threading.Lock) -> None:
        self._factory = factory
        self._lock = factory()
        _locks.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> ForkSafeLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _reset(self) -> None:
        self._lock = self._factory()


def _release_all_in_child() -> None:
    for lock in list(_locks):
        lock._reset()


os.register_at_fork(after_in_child=_release_all_in_child)
