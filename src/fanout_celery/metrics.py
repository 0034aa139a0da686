"""Prometheus counters of a worker's runs, from fanout's signals (``prometheus_client``,
the ``dashboard`` extra).

In the worker's app module::

    from fanout_celery import metrics
    metrics.install()          # count runs, steps and attempts of this process
    metrics.serve(9808)        # and expose them at http://<host>:9808/metrics

With the prefork pool, runs execute in the pool's child processes: set
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) so the parent's
endpoint sums them, or use the threads pool. The dashboard's ``/metrics`` adds gauges read
from Redis (parked runs, pump lag, recent runs by status).

Metrics (labels in braces):

- ``fanout_runs_started_total{function}``: attempts that took a run's lease;
- ``fanout_runs_total{function,status}``: runs that ended here (completed, failed,
  cancelled);
- ``fanout_runs_parked_total{function,status}``: attempts that parked (sleeping,
  waiting, retrying: waiting for a step's back-off);
- ``fanout_step_retries_total{function}``: step (or handler) failures retried;
- ``fanout_attempt_duration_seconds{function}``: histogram of attempt durations (from
  the lease to the end or the park).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

from .integration import signals

_installed: dict[int, Metrics] = {}
_lock = threading.Lock()


class Metrics:
    """The counters, connected to the signals of this process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter("fanout_runs_started", "Attempts that took a run's lease",
                               ["function"], registry=registry)
        self.ended = Counter("fanout_runs", "Runs that ended, by status",
                             ["function", "status"], registry=registry)
        self.parked = Counter("fanout_runs_parked", "Attempts that parked, by status",
                              ["function", "status"], registry=registry)
        self.retries = Counter("fanout_step_retries", "Step or handler failures retried",
                               ["function"], registry=registry)
        self.duration = Histogram("fanout_attempt_duration_seconds",
                                  "Attempt durations, lease to end or park", ["function"],
                                  registry=registry)
        self._began: dict[str, float] = {}
        signals.run_started.connect(self._on_started, weak=False)
        signals.run_finished.connect(self._on_finished, weak=False)
        signals.run_failed.connect(self._on_failed, weak=False)
        signals.run_parked.connect(self._on_parked, weak=False)
        signals.step_retried.connect(self._on_retried, weak=False)

    def _took(self, function: str, run_id: str) -> None:
        began = self._began.pop(run_id, None)
        if began is not None:
            self.duration.labels(function).observe(time.monotonic() - began)

    def _on_started(self, sender: Any = None, run_id: str = "", **kw: Any) -> None:
        self._began[run_id] = time.monotonic()
        self.started.labels(str(sender)).inc()

    def _on_finished(self, sender: Any = None, run_id: str = "", status: str = "",
                     **kw: Any) -> None:
        self.ended.labels(str(sender), status).inc()
        self._took(str(sender), run_id)

    def _on_failed(self, sender: Any = None, run_id: str = "", **kw: Any) -> None:
        self.ended.labels(str(sender), "failed").inc()
        self._took(str(sender), run_id)

    def _on_parked(self, sender: Any = None, run_id: str = "", status: str = "",
                   **kw: Any) -> None:
        self.parked.labels(str(sender), status).inc()
        self._took(str(sender), run_id)

    def _on_retried(self, sender: Any = None, run_id: str = "", **kw: Any) -> None:
        # The attempt ends here too: it parks until the back-off is over.
        self.retries.labels(str(sender)).inc()
        self.parked.labels(str(sender), "retrying").inc()
        self._took(str(sender), run_id)


def install(registry: CollectorRegistry | None = None) -> Metrics:
    """Count this process's runs into ``registry`` (prometheus_client's default one);
    once per registry."""
    target = REGISTRY if registry is None else registry
    with _lock:
        if id(target) not in _installed:
            _installed[id(target)] = Metrics(target)
        return _installed[id(target)]


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Expose the default registry at ``http://<address>:<port>/metrics`` (a thread)."""
    start_http_server(port, addr=address)
