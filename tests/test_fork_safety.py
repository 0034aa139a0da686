"""A lock that a thread of a worker holds when the prefork pool forks a child must not
stay locked in the child: the child would hang at its first use of it, with its run's
lease renewed for ever (found by the worker-kill chaos test: a pool child, forked while
the pump thread held the router's lock, hung in ``Router.all``)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fanout_celery.engine.router import Router
from fanout_celery.model.definition import Subscription
from fanout_celery.model.forksafe import ForkSafeLock
from fanout_celery.store.memory import MemoryStore
from fanout_celery.store.redis import connect


def exit_code_of(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None (and the child killed) if it did not exit in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


def fork_while_held(lock: ForkSafeLock, in_child) -> int | None:
    """Fork while another thread holds ``lock``; the child runs ``in_child`` and exits 0."""
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: one thread, the lock "held" by a thread it does not have
            try:
                in_child()
            finally:
                os._exit(0)
        return exit_code_of(pid, timeout=10)
    finally:
        done.set()
        thread.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_finds_a_lock_held_by_a_parent_thread_released():
    lock = ForkSafeLock()
    assert fork_while_held(lock, lambda: lock.acquire(timeout=5) or os._exit(3)) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_routes_while_the_parents_pump_holds_the_router():
    store = MemoryStore()
    router = Router(store)
    router.add(Subscription("f", ("app/x",), task="fanout.f"))

    def route() -> None:
        if [s.function_id for s in router.subscribers({"name": "app/x", "data": {}})] != ["f"]:
            os._exit(4)

    assert fork_while_held(router._lock, route) == 0


class _HeldLock:
    """Adapts a redis-py lock to ``fork_while_held``."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_talks_to_redis_while_a_parent_thread_holds_the_pool(redis_url):
    # redis-py resets a pool at a child's first command under the pool's lock: held by a
    # parent thread at the fork, it would hang the child for ever (redis-py 8).
    client = connect(redis_url)
    client.set("fork:probe", "ok")

    def use() -> None:
        if client.get("fork:probe") != "ok":
            os._exit(5)

    assert fork_while_held(_HeldLock(client.connection_pool._lock), use) == 0
    assert client.get("fork:probe") == "ok"  # the parent's pool is untouched
    client.close()
