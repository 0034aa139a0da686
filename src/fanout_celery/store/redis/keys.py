"""Every Redis key fanout_celery uses is built here, and nowhere else.

Two layouts. On one Redis (``shards == 0``, the layout of every earlier version) per-run
keys share the hash tag ``{<run_id>}`` and the indexes (timers, leases, dispatch,
deadlines, events, function histories) are one key each.

On a Redis Cluster (``shards == N``) every key a script touches must be in one slot, so
the indexes are **sharded**: shard ``s`` has its own timers, leases, dispatch cover,
deadlines, function histories and event run lists, all under the hash tag of shard ``s``,
and a run's own keys carry that tag too. A run lives in shard ``int(run_id[:2], 16) % N``
(run ids are hex digests, so runs spread evenly; N divides 256); the scripts of one run
(start, checkpoint, park, finish...) then touch one slot. A run that must share a slot
with another key (the pending run of a debounce or batch buffer) gets an id whose first
two characters name that shard (``colocated``). An event is stored in shard
``crc32(id) % N``. Keys looked up by event name (waiters, recent events, cancel_on
entries) carry the name as their tag; concurrency slots, wait queues and the woken-run
timers share one flow-control tag; other flow-control keys are tagged by their shard.
The shard tags are chosen so that shard ``s`` hashes into slot range ``s`` of N equal
ranges: a cluster whose masters hold equal slot ranges holds equal numbers of shards.

Run ids are hex digests, event and function ids are validated to ``[A-Za-z0-9_-.]``,
and event names cannot hold braces, so no caller-supplied id can form another key.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from functools import cache

from ..port import FlowKey, SlotSet

SLOTS = 16384
MAX_SHARDS = 256


def _crc16(data: bytes) -> int:
    """Redis Cluster's key hash (CRC16/XMODEM)."""
    return binascii.crc_hqx(data, 0)


def key_slot(key: str) -> int:
    """The cluster slot of ``key``: the CRC16 of its hash tag (or of the whole key)."""
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return _crc16(raw) % SLOTS


@cache
def shard_tags(shards: int) -> tuple[str, ...]:
    """A hash tag per shard, shard ``s``'s slot in the ``s``-th of ``shards`` equal slot
    ranges (found by trying ``s<s>.<n>`` for n = 0, 1, ...)."""
    tags = []
    width = SLOTS // shards
    for s in range(shards):
        n = 0
        while not s * width <= _crc16(f"s{s}.{n}".encode()) % SLOTS < (s + 1) * width:
            n += 1
        tags.append(f"s{s}.{n}")
    return tuple(tags)


def check_shards(shards: int) -> int:
    if shards and (shards > MAX_SHARDS or MAX_SHARDS % shards):
        raise ValueError(f"shards must divide {MAX_SHARDS} (2, 4, ..., 256), not {shards}")
    return shards


@dataclass(frozen=True)
class Keys:
    """The key layout under one prefix (``fanout_key_prefix``): one Redis
    (``shards=0``) or a Redis Cluster with ``shards`` shards."""

    prefix: str = "fanout"
    shards: int = 0
    _tags: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        check_shards(self.shards)
        if self.shards:
            object.__setattr__(self, "_tags", shard_tags(self.shards))

    # -- placement
    @property
    def sharded(self) -> bool:
        return self.shards > 0

    @property
    def all_shards(self) -> range:
        """Every shard (one, on one Redis)."""
        return range(self.shards or 1)

    def shard_of(self, run_id: str) -> int:
        """The shard a run lives in (any other id, by its CRC: it names no run)."""
        if not self.shards:
            return 0
        head = run_id[:2]
        if len(head) == 2 and all(c in "0123456789abcdef" for c in head):
            return int(head, 16) % self.shards
        return binascii.crc32(run_id.encode()) % self.shards

    def event_shard(self, event_id: str) -> int:
        """The shard an event is stored in."""
        return binascii.crc32(event_id.encode()) % self.shards if self.shards else 0

    def flow_shard(self, key: FlowKey) -> int:
        """The shard of a flow-control key (and of a buffer's pending run)."""
        return binascii.crc32(key.dumps().encode()) % self.shards if self.shards else 0

    def colocated(self, run_id: str, shard: int) -> str:
        """``run_id`` made to live in ``shard`` (unchanged on one Redis)."""
        return f"{shard:02x}{run_id[2:]}" if self.shards else run_id

    def _in(self, shard: int, rest: str) -> str:
        return f"{self.prefix}:{{{self._tags[shard]}}}:{rest}"

    # -- one run
    def run(self, run_id: str) -> str:
        """Hash: status, static fields, trigger events, lease, output, error, timestamps
        (the layout: base.py, static_fields)."""
        if self.shards:
            return self._in(self.shard_of(run_id), f"run:{run_id}")
        return f"{self.prefix}:{{{run_id}}}:run"

    def steps(self, run_id: str) -> str:
        """Hash: step key -> JSON step record."""
        if self.shards:
            return self._in(self.shard_of(run_id), f"steps:{run_id}")
        return f"{self.prefix}:{{{run_id}}}:steps"

    def done(self, run_id: str) -> str:
        """List: one entry, the final status, pushed when the run ends and kept for a
        minute, that ``wait_finished`` blocks on (rotating it, so every waiter sees it)."""
        if self.shards:
            return self._in(self.shard_of(run_id), f"done:{run_id}")
        return f"{self.prefix}:{{{run_id}}}:done"

    # -- indexes, one per shard
    def timers(self, shard: int = 0) -> str:
        """Zset: run id -> when (ms) the run must be put back on the broker."""
        return self._in(shard, "timers") if self.shards else f"{self.prefix}:timers"

    def leases(self, shard: int = 0) -> str:
        """Zset: run id -> when (ms) the lease of its running execution expires."""
        return self._in(shard, "leases") if self.shards else f"{self.prefix}:leases"

    def dispatch(self, shard: int = 0) -> str:
        """Zset: run id -> deadline (ms) for a published run to start; a message the
        broker lost is published again by the pump."""
        return self._in(shard, "dispatch") if self.shards else f"{self.prefix}:dispatch"

    def deadlines(self, shard: int = 0) -> str:
        """Zset: ``start:<run_id>`` / ``finish:<run_id>`` -> when the run's start or
        finish timeout expires."""
        return self._in(shard, "deadlines") if self.shards else f"{self.prefix}:deadlines"

    def function_runs(self, function_id: str, shard: int = 0) -> str:
        """Zset: run id -> creation time (ms), the function's run history (its runs of
        that shard)."""
        if self.shards:
            return self._in(shard, f"function:{function_id}:runs")
        return f"{self.prefix}:function:{function_id}:runs"

    def event_runs(self, event_id: str, shard: int = 0) -> str:
        """Hash: run id -> '', the runs an event started (those of that shard); a set
        when written before this layout (scripts/prelude.lua: list_run)."""
        if self.shards:
            return self._in(shard, f"event:{event_id}:runs")
        return f"{self.prefix}:event:{event_id}:runs"

    def archive(self, shard: int = 0) -> str:
        """Zset: finished runs not yet handed to the history sink, scored by their end."""
        return self._in(shard, "archive") if self.shards else f"{self.prefix}:archive"

    def events(self, shard: int = 0) -> str:
        """Zset: event id -> time stored (ms), every event kept for the retention period
        (the events of that shard)."""
        return self._in(shard, "events") if self.shards else f"{self.prefix}:events"

    def event(self, event_id: str) -> str:
        """String: the stored event (JSON, without the id this key names: base.py,
        read_event), kept for the retention period."""
        if self.shards:
            return self._in(self.event_shard(event_id), f"event:{event_id}")
        return f"{self.prefix}:event:{event_id}"

    # -- single keys
    @property
    def subscriptions(self) -> str:
        """Hash: function id -> JSON (triggers, task name, queue, filter)."""
        return f"{self.prefix}:subscriptions"

    @property
    def cron(self) -> str:
        """Hash: function id -> the time (ms) up to which its cron slots were examined."""
        return f"{self.prefix}:cron"

    @property
    def pump_channel(self) -> str:
        """Pub/sub channel: wake times of timers set due before a pump's next look."""
        return f"{self.prefix}:pump:timers"

    @property
    def paused(self) -> str:
        """Hash: function id -> how it is paused ("hold" or "skip")."""
        return f"{self.prefix}:paused"

    def held(self, function_id: str) -> str:
        """Set: runs of a paused function waiting for its resume."""
        return self._flow(f"held:{function_id}")

    # -- by event name (one tag per name on a cluster)
    def _named(self, event_name: str, kind: str, rest: str = "") -> str:
        if self.shards:
            return f"{self.prefix}:{{n:{event_name}}}:{kind}{rest}"
        return f"{self.prefix}:{kind}:{event_name}{rest}"

    def waits(self, event_name: str, bucket: str) -> str:
        """Hash: ``<run_id> <step key>`` -> JSON waiter (match path, value, timeout) of the
        steps waiting for an event of that name whose match value falls in ``bucket``
        (``<path>=<digest of the value>``, or ``*`` for waiters without a match)."""
        return self._named(event_name, "waits", f":{bucket}")

    def wait_paths(self, event_name: str) -> str:
        """Hash: match path -> ``added_ms|expiry_ms``, the paths waiters of that name use
        (senders note each event under the bucket of every one)."""
        return self._named(event_name, "waitpaths")

    def recent(self, event_name: str) -> str:
        """Zset: event id -> time noted (server ms), the last few minutes of events of that
        name, so a wait registered just after its event still finds it."""
        return self._named(event_name, "recent")

    def recent_bucket(self, event_name: str, bucket: str) -> str:
        """Zset: the same, for the events of one match-value bucket."""
        return self._named(event_name, "recent", f":{bucket}")

    def cancels(self, event_name: str, bucket: str) -> str:
        """Hash: run id -> JSON (match path, value, expiry) of runs an event of that name
        cancels (``cancel_on``), by match-value bucket as for waits."""
        return self._named(event_name, "cancels", f":{bucket}")

    def cancel_paths(self, event_name: str) -> str:
        """Hash: match path -> ``added_ms|expiry_ms``, the paths cancel_on entries use."""
        return self._named(event_name, "cancelpaths")

    # -- flow control
    def flow(self, key: FlowKey) -> str:
        """A flow-control key: a string (idempotency and singleton claims, the
        throttle's theoretical arrival time), a zset (rate-limit log) or a hash (the
        pending run of a debounce or batch)."""
        rest = f"flow:{key.kind}:{key.scope}:{key.value}"
        if self.shards:
            # The throttle is read with the concurrency slots (gate.lua): their tag.
            if key.kind == "throttle":
                return f"{self.prefix}:{{flow}}:{rest}"
            return self._in(self.flow_shard(key), rest)
        return f"{self.prefix}:{rest}"

    def _flow(self, rest: str) -> str:
        return f"{self.prefix}:{{flow}}:{rest}" if self.shards else f"{self.prefix}:{rest}"

    def slots(self, slot_set: SlotSet) -> str:
        """Zset: run id -> lease expiry, the runs holding a concurrency slot."""
        return self._flow(f"flow:slots:{slot_set.scope}:{slot_set.value}")

    def queue(self, slot_set: SlotSet) -> str:
        """Zset: run id -> priority score, the runs waiting for a concurrency slot."""
        return self._flow(f"flow:queue:{slot_set.scope}:{slot_set.value}")

    @property
    def waiting(self) -> str:
        """Hash: wait queue key -> ``scope|value|limit``, the queues holding runs."""
        return self._flow("flow:waiting")

    @property
    def woken(self) -> str:
        """Zset: run id -> when to publish it: runs a released slot woke or a throttle
        delays. One Redis: the timers. A cluster: a zset with the slots, which the pump
        claims from as from a shard's timers."""
        return self._flow("flow:woken") if self.shards else self.timers()
