"""Every Redis key fanout_celery uses is built here, and nowhere else.

Per-run keys share the hash tag ``{<run_id>}``. Run ids are hex digests, event and
function ids are validated to ``[A-Za-z0-9_-.]``, so no caller-supplied id can
form another run's key.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..port import FlowKey, SlotSet


@dataclass(frozen=True)
class Keys:
    """The key layout under one prefix (``fanout_key_prefix``)."""

    prefix: str = "fanout"

    # -- one run
    def run(self, run_id: str) -> str:
        """Hash: status, meta (static fields, JSON), trigger events, lease, output,
        error, timestamps."""
        return f"{self.prefix}:{{{run_id}}}:run"

    def steps(self, run_id: str) -> str:
        """Hash: step key -> JSON step record."""
        return f"{self.prefix}:{{{run_id}}}:steps"

    def done(self, run_id: str) -> str:
        """List: one entry, the final status, pushed when the run ends and kept for a
        minute, that ``wait_finished`` blocks on (rotating it, so every waiter sees it)."""
        return f"{self.prefix}:{{{run_id}}}:done"

    # -- global indexes
    @property
    def timers(self) -> str:
        """Zset: run id -> when (ms) the run must be put back on the broker."""
        return f"{self.prefix}:timers"

    @property
    def leases(self) -> str:
        """Zset: run id -> when (ms) the lease of its running execution expires."""
        return f"{self.prefix}:leases"

    @property
    def dispatch(self) -> str:
        """Zset: run id -> deadline (ms) for a published run to start; a message the
        broker lost is published again by the pump."""
        return f"{self.prefix}:dispatch"

    @property
    def subscriptions(self) -> str:
        """Hash: function id -> JSON (triggers, task name, queue, filter)."""
        return f"{self.prefix}:subscriptions"

    @property
    def cron(self) -> str:
        """Hash: function id -> the time (ms) up to which its cron slots were examined."""
        return f"{self.prefix}:cron"

    def waits(self, event_name: str, bucket: str) -> str:
        """Hash: ``<run_id> <step key>`` -> JSON waiter (match path, value, timeout) of the
        steps waiting for an event of that name whose match value falls in ``bucket``
        (``<path>=<digest of the value>``, or ``*`` for waiters without a match)."""
        return f"{self.prefix}:waits:{event_name}:{bucket}"

    def wait_paths(self, event_name: str) -> str:
        """Hash: match path -> ``added_ms|expiry_ms``, the paths waiters of that name use
        (senders note each event under the bucket of every one)."""
        return f"{self.prefix}:waitpaths:{event_name}"

    def recent(self, event_name: str) -> str:
        """Zset: event id -> time noted (server ms), the last few minutes of events of that
        name, so a wait registered just after its event still finds it."""
        return f"{self.prefix}:recent:{event_name}"

    def recent_bucket(self, event_name: str, bucket: str) -> str:
        """Zset: the same, for the events of one match-value bucket."""
        return f"{self.prefix}:recent:{event_name}:{bucket}"

    def cancels(self, event_name: str, bucket: str) -> str:
        """Hash: run id -> JSON (match path, value, expiry) of runs an event of that name
        cancels (``cancel_on``), by match-value bucket as for waits."""
        return f"{self.prefix}:cancels:{event_name}:{bucket}"

    def cancel_paths(self, event_name: str) -> str:
        """Hash: match path -> ``added_ms|expiry_ms``, the paths cancel_on entries use."""
        return f"{self.prefix}:cancelpaths:{event_name}"

    @property
    def deadlines(self) -> str:
        """Zset: ``start:<run_id>`` / ``finish:<run_id>`` -> when the run's start or
        finish timeout expires."""
        return f"{self.prefix}:deadlines"

    @property
    def events(self) -> str:
        """Zset: event id -> time stored (ms), every event kept for the retention period."""
        return f"{self.prefix}:events"

    def event(self, event_id: str) -> str:
        """String: the stored event (JSON), kept for the retention period."""
        return f"{self.prefix}:event:{event_id}"

    def event_runs(self, event_id: str) -> str:
        """Set: the runs an event started."""
        return f"{self.prefix}:event:{event_id}:runs"

    def function_runs(self, function_id: str) -> str:
        """Zset: run id -> creation time (ms), the function's run history."""
        return f"{self.prefix}:function:{function_id}:runs"

    # -- flow control
    def flow(self, key: FlowKey) -> str:
        """A flow-control key: a string (idempotency and singleton claims, the
        throttle's theoretical arrival time), a zset (rate-limit log) or a hash (the
        pending run of a debounce or batch)."""
        return f"{self.prefix}:flow:{key.kind}:{key.scope}:{key.value}"

    def slots(self, slot_set: SlotSet) -> str:
        """Zset: run id -> lease expiry, the runs holding a concurrency slot."""
        return f"{self.prefix}:flow:slots:{slot_set.scope}:{slot_set.value}"

    def queue(self, slot_set: SlotSet) -> str:
        """Zset: run id -> priority score, the runs waiting for a concurrency slot."""
        return f"{self.prefix}:flow:queue:{slot_set.scope}:{slot_set.value}"

    @property
    def waiting(self) -> str:
        """Hash: wait queue key -> ``scope|value|limit``, the queues holding runs."""
        return f"{self.prefix}:flow:waiting"
