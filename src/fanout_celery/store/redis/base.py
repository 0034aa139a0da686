"""What every part of the Redis store shares: the client, the key layout, the scripts,
and the encoding of a run record's static fields."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import redis

from ...errors import CancelRequested, LeaseLostError
from ...model.definition import default_task
from ...model.records import NewRun, Route, route_of_meta
from ..port import Resolution
from .connect import DEFAULT_SHARDS, ReplicatedClient, connect, is_cluster, is_transient
from .keys import Keys
from .lua import Scripts, execute

# The fields of a run record that change while it executes (the others are static).
HOT_FIELDS = frozenset({"status", "created_at", "attempt", "events"})

_SCRIPTS: Scripts | None = None


def _scripts() -> Scripts:
    global _SCRIPTS
    if _SCRIPTS is None:  # read once per process: the sources never change
        _SCRIPTS = Scripts()
    return _SCRIPTS


class RedisBase:
    """One client, one prefix."""

    def __init__(self, url: str, prefix: str = "fanout",
                 client: redis.Redis[str] | None = None,
                 options: dict[str, Any] | None = None, compact: bool = True) -> None:
        self.url = url
        # Run records in the compact layout (False: the earlier one; see static_fields),
        # and so an event's run list, a hash or a set (scripts/prelude.lua: list_run).
        self.compact = compact
        self.as_set = "" if compact else "1"
        self.prefix = prefix
        self.options = dict(options or {})
        # A Redis Cluster: sharded keys, and pipelines executed in ordered phases (a
        # cluster pipeline runs each master's part at once, in no order between them).
        self.cluster = is_cluster(url, self.options)
        self.keys = Keys(prefix, int(self.options.get("shards") or DEFAULT_SHARDS)
                         if self.cluster else 0)
        if client is None:
            client = connect(url, self.options)
            replicas = int(self.options.get("wait_replicas") or 0)
            if replicas:
                timeout_ms = int(float(self.options.get("wait_timeout", 1.0)) * 1000)
                client = ReplicatedClient(client, replicas, timeout_ms)  # type: ignore[assignment]
        self.client: redis.Redis[str] = client
        self.scripts = _scripts()
        # The match paths waiters and cancel_on entries of each event name were last seen
        # using (note_events.lua corrects it when it is out of date).
        self._paths: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.prefix!r}>"

    def close(self) -> None:
        self.client.close()

    def transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def by_shard(self, run_ids: Sequence[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for run_id in run_ids:
            out.setdefault(self.keys.shard_of(run_id), []).append(run_id)
        return out

    # -- one execution ----------------------------------------------------------------

    def pipeline(self) -> Any:
        """A non-transactional pipeline (a cluster pipeline on a cluster)."""
        return self.client.pipeline(transaction=False)

    def phase(self, pipe: Any) -> Any:
        """End a phase of ordered writes: on a cluster, execute ``pipe`` now (what
        follows must not start before it) and return ``(results, new pipeline)``; on one
        Redis, whose pipeline runs in order, keep queuing (``([], pipe)``)."""
        if not self.cluster:
            return [], pipe
        return execute(pipe, self.scripts, self.client), self.pipeline()


# -- a run record's static fields, as stored (keys.py: run) -----------------------------
# The compact layout (the default): each static field is a field of the run's hash (but
# a task named by default), and a run of one event keeps it as "event", its JSON without
# its id and time, which are fields of their own. A run of small values then stays a
# Redis listpack (values of at most hash-max-listpack-value, 64 bytes by default): 488 B
# for a completed run where the earlier layout's hash table took 944 B (BENCHMARKS.md,
# figure 6). The earlier layout, which
# workers of 0.1 read (fanout_compact_records = False writes it), and batches and
# debounces still write: the static fields in one JSON field, "meta", and "events", the
# JSON list of the trigger events. Both are read, by ``expand`` and ``route_of``.

# The fields a run's task message is routed by (model/records.py: route_of_meta), read
# in this order by ``route`` in scripts/prelude.lua, after the earlier layout's "meta".
ROUTE_FIELDS = ("task", "queue", "event_name", "parent_task", "root_task", "priority",
                "function")
EVENT_FIELDS = ("events", "event", "event_id", "event_ts")
_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators)
_LAID_OUT = HOT_FIELDS | {"meta", *EVENT_FIELDS}


def encode_event(event: dict[str, Any]) -> tuple[str, str]:
    """An event's JSON without its id and time (a compact run's "event"), and its record
    (keys.py: event), which leaves out only the id its key names: encoded once, the
    second from the first."""
    body = _encode({k: v for k, v in event.items() if k != "id" and k != "ts"})
    sep = "," if body != "{}" else ""
    return body, f'{body[:-1]}{sep}"ts":{_ts_text(event["ts"])}}}'


def read_event(event_id: str, record: str) -> dict[str, Any]:
    """An event from its record (written with its id before the record left it out)."""
    event: dict[str, Any] = json.loads(record)
    event.setdefault("id", event_id)
    return event


def _ts_text(ts: Any) -> str:
    return str(ts) if type(ts) is int else json.dumps(ts)


def _joined(body: str, event_id: str, ts_text: str) -> str:
    quoted = f'"{event_id}"' if event_id.isalnum() and event_id.isascii() \
        else json.dumps(event_id)
    sep = "," if body != "{}" else ""
    return f'{body[:-1]}{sep}"id":{quoted},"ts":{ts_text}}}'


def static_fields(run: NewRun, compact: bool = True, body: str | None = None) -> list[str]:
    """The fields a new run's hash starts with, flat (name, value, ...), besides its
    status, creation time and attempt; ``body``: its one event's ``encode_event()[0]``."""
    own = event_fields(run, compact, body)
    if len(own) == 2:
        return [*shared_fields(run, compact), "events", own[1]]
    return [*shared_fields(run, compact), "event", own[1], "event_id", own[2],
            "event_ts", own[3]]


def shared_fields(run: NewRun, compact: bool = True) -> tuple[str, ...]:
    """The static fields the runs of a fan-out share (all but the events), flat; one
    tuple for all of them (cached)."""
    if not compact:
        return ("meta", pack_meta(run.meta))
    return _inline(tuple(run.meta.items()))


def event_fields(run: NewRun, compact: bool = True, body: str | None = None) -> list[str]:
    """A run's events as create_runs.lua takes them: ``["1", body, id, ts]`` for its one
    event in the compact layout ("event", "event_id", "event_ts"), else
    ``["0", events json]`` ("events")."""
    events = run.events
    if not compact or len(events) != 1 or "id" not in events[0] or "ts" not in events[0]:
        return ["0", run.events_json]
    ev = events[0]
    if body is None:
        body = encode_event(ev)[0]
    return ["1", body, ev["id"], _ts_text(ev["ts"])]


@functools.lru_cache(maxsize=1024)
def _inline(items: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    # The runs of a fan-out share their static fields: flattened once, not once a run.
    # A task named by default is not stored: it is read back from the function's id.
    default = default_task(dict(items).get("function", ""))
    return tuple(x for k, v in items if k not in _LAID_OUT
                 and not (k == "task" and v == default) for x in (k, str(v)))


def pack_meta(fields: dict[str, str]) -> str:
    """The earlier layout's "meta" field."""
    return _packed(tuple(fields.items()))


@functools.lru_cache(maxsize=1024)
def _packed(items: tuple[tuple[str, str], ...]) -> str:
    return json.dumps({k: v for k, v in items if k not in HOT_FIELDS}, separators=(",", ":"))


def expand(raw: dict[str, str]) -> dict[str, str]:
    """A run record as callers read it, in either layout: its static fields in line and
    its trigger events in "events"."""
    body = raw.pop("event", None)
    if body is not None:
        raw["events"] = f"[{_joined(body, raw.pop('event_id', ''), raw.pop('event_ts', '0'))}]"
    meta = raw.pop("meta", None)
    if meta:
        return {**json.loads(meta), **raw}
    if "task" not in raw and "function" in raw:
        raw["task"] = default_task(raw["function"])
    return raw


def events_of(values: Sequence[str | None]) -> str | None:
    """A run's "events" from its fields ``EVENT_FIELDS``, as HMGET reads them."""
    events, body, event_id, ts = values
    if body is not None:
        return f"[{_joined(body, event_id or '', ts or '0')}]"
    return events


def route_of(raw: Sequence[str | None]) -> Route:
    """A run's route, from what ``route`` in scripts/prelude.lua returns (the earlier
    layout's "meta", then ``ROUTE_FIELDS``)."""
    meta = json.loads(raw[0]) if raw[0] else {}
    for name, value in zip(ROUTE_FIELDS, raw[1:], strict=True):
        if value is not None:
            meta[name] = value
    if "task" not in meta and "function" in meta:
        meta["task"] = default_task(meta["function"])
    return route_of_meta(meta)


def pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def fenced(code: Any, run_id: str, what: str) -> None:
    if code == 0:
        raise LeaseLostError(f"run {run_id} lost its lease {what}")
    if code == -1:
        raise CancelRequested()


def flat(fields: dict[str, str] | None) -> list[str]:
    out: list[str] = []
    for name, value in (fields or {}).items():
        out += [name, value]
    return out

def server_now(client: Any) -> int:
    """The server's clock, in ms (TIME of the node a keyless command goes to)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def resolution(raw: Any) -> Resolution:
    if isinstance(raw, list):
        return Resolution("woken", route_of(raw))
    return Resolution("executing" if raw else "none")
