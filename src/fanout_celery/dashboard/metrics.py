"""``/metrics`` of the dashboard: the state of runs as Prometheus gauges, read from the
store at each scrape (the worker-side counters are ``fanout_celery.metrics``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..fanout import Fanout
from ..model.events import now_ms
from . import views


class StateCollector:
    """Gauges computed from the store when scraped."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout

    def collect(self) -> Iterator[Any]:
        store = self.fanout.store
        index = GaugeMetricFamily("fanout_index_entries",
                                  "Entries of the state's indexes: timers (parked runs "
                                  "with a wake time), leases (runs executing), dispatch "
                                  "(published runs not started yet), deadlines",
                                  labels=["index"])
        for name in ("timers", "leases", "dispatch", "deadlines"):
            index.add_metric([name], store.count(name))
        yield index
        due = store.next_due()
        lag = GaugeMetricFamily("fanout_pump_lag_seconds",
                                "How long the earliest timer has been due without a pump "
                                "claiming it (0 when none is due)")
        lag.add_metric([], max(0.0, (now_ms() - due) / 1000) if due is not None else 0.0)
        yield lag
        recent = GaugeMetricFamily("fanout_recent_runs",
                                   "Runs created in the last hour, by function and status",
                                   labels=["function", "status"])
        for row in views.functions_view(self.fanout):
            for status, n in sorted(row["counts"]["hour"].items()):
                recent.add_metric([row["id"], status], n)
        yield recent


def render_metrics(fanout: Fanout) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(fanout))
    return generate_latest(registry), CONTENT_TYPE_LATEST
