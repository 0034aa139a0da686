"""The timer pump: a bootstep in every worker that moves due runs back onto the broker.

Durable timers (sleeps, retry back-off) live in the store, scored by wake time, instead
of broker ETAs: the Redis broker's visibility timeout would deliver a long-ETA message
twice, and a message held by a worker is lost with the worker. What one round does is
the engine's (``engine/pump.py``); this module runs rounds in a thread of the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import bootsteps

from ..errors import ConfigurationError
from .host import Host, host_for
from .task import ParkedLogFilter
from .transport import use_guarded_transport

logger = logging.getLogger("fanout.pump")

# Subscriptions are re-published this often, so a Redis that lost its data relearns them.
REPUBLISH_SECONDS = 60.0


class PumpThread:
    """The pump loop of one worker, in a daemon thread."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._announcements: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fanout-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_announcements()

    def _loop(self) -> None:
        interval = self.host.settings.pump_interval
        # -inf, not 0: monotonic() counts from boot, so on a host up for less than
        # REPUBLISH_SECONDS a 0 would delay the first publish by up to a minute.
        last_housekeeping = float("-inf")
        failures = 0
        while not self._stop.is_set():
            try:
                pump = self.host.engine.pump
                if time.monotonic() - last_housekeeping > REPUBLISH_SECONDS:
                    pump.housekeeping()
                    last_housekeeping = time.monotonic()
                sent = pump.round()
                failures = 0
            except Exception:
                failures += 1
                # Redis or the broker is away: back off, up to 5 s, and keep trying.
                delay = min(interval * 2 ** failures, 5.0)
                logger.warning("pump: round failed; retrying in %.1fs", delay, exc_info=True)
                self._stop.wait(delay)
                continue
            if not sent:
                self._wait(pump, interval)

    def _wait(self, pump: Any, interval: float) -> None:
        """Until the earliest timer is due (at most ``interval``), or sooner if another
        process announces a timer due before then, or until ``stop``."""
        try:
            deadline = time.monotonic() + pump.pause(interval)
            if self._announcements is None:
                self._announcements = self.host.engine.store.timer_announcements()
        except Exception:  # Redis away: the next round says so
            self._stop.wait(interval)
            return
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                # Bounded, so that stop() is seen within half a second.
                announced = self._announcements.wait(min(remaining, 0.5))
            except Exception:  # its connection broke: a new one next time
                self._close_announcements()
                self._stop.wait(max(0.0, deadline - time.monotonic()))
                return
            if announced is not None:
                deadline = min(deadline, time.monotonic() + max(
                    0.0, (announced - time.time() * 1000) / 1000))

    def _close_announcements(self) -> None:
        if self._announcements is not None:
            self._announcements.close()
            self._announcements = None


# Celery's own ``--without-gossip`` style: ``celery worker --without-fanout-pump``.
WITHOUT_PUMP_OPTION = "--without-fanout-pump"


def add_worker_option(app: Any) -> None:
    """Add ``--without-fanout-pump`` to ``celery worker`` of ``app`` (once)."""
    from celery.bin.base import CeleryOption

    options = app.user_options["worker"]
    if any(WITHOUT_PUMP_OPTION in getattr(o, "opts", ()) for o in options):
        return
    options.add(CeleryOption(
        [WITHOUT_PUMP_OPTION], is_flag=True, default=False,
        help="Do not run fanout's timer pump in this worker (another worker must).",
        help_group="Fanout Options"))


# The pools a worker of durable functions is tested on. Eventlet is deprecated upstream
# (Celery's docs and eventlet's own) and its monkey-patching of threads and locks is not
# tested here, so a worker on it refuses to start rather than fail later in a step.
SUPPORTED_POOLS = ("prefork", "threads", "solo", "gevent")


def refuse_unsupported_pool(worker: Any) -> None:
    """Raise ``ConfigurationError`` for a worker on the eventlet pool, before it
    consumes anything."""
    pool = getattr(worker, "pool_cls", None)
    where = f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', pool)}"
    if "eventlet" in where.lower():
        raise ConfigurationError(
            "fanout_celery does not support the eventlet pool (deprecated upstream): "
            f"start this worker with --pool {', '.join(SUPPORTED_POOLS[:-1])} or "
            f"{SUPPORTED_POOLS[-1]}")


class PumpStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep that runs the pump of the app's ``Fanout`` (unless the worker
    was started ``--without-fanout-pump`` or ``fanout_pump`` is False); at worker init
    (before the consumer connects) it also gives a Redis broker fanout's guarded
    transport."""

    label = "fanout-pump"

    def __init__(self, worker: Any, without_fanout_pump: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.pump: PumpThread | None = None
        self.without_pump = bool(without_fanout_pump)
        if host_for(worker.app) is not None:
            try:
                refuse_unsupported_pool(worker)
            except ConfigurationError as error:
                # One line on the worker's console, not a traceback, and exit code 1.
                raise SystemExit(str(error)) from None
            use_guarded_transport(worker.app)
            # Pool processes send the final events of a run's earlier attempts when the
            # worker sends task events (-E); they read it from the app's configuration.
            if getattr(worker, "task_events", False):
                worker.app.conf.worker_send_task_events = True
            trace = logging.getLogger("celery.app.trace")
            if not any(isinstance(f, ParkedLogFilter) for f in trace.filters):
                trace.addFilter(ParkedLogFilter())

    def start(self, worker: Any) -> None:
        host = host_for(worker.app)
        if host is None:
            return
        if self.without_pump or not host.settings.pump:
            why = WITHOUT_PUMP_OPTION if self.without_pump else "fanout_pump = False"
            logger.info("pump: not started in this worker (%s): another worker's pump "
                        "must wake sleeping and retrying runs", why)
            return
        try:
            host.check_redis()
        except Exception:
            logger.warning("pump: could not check the Redis settings", exc_info=True)
        self.pump = PumpThread(host)
        self.pump.start()
        logger.info("pump: started for %r", host)

    def stop(self, worker: Any) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump = None

    # A cold shutdown (and Celery's test worker) sends terminate, not stop: the base class
    # would only stop ``self.obj``, which this step does not use.
    shutdown = terminate = stop
