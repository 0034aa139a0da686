"""Redis side of flow control: concurrency slots and their wait queues, throttle (GCRA),
rate limits, singletons, idempotency keys, debounce and batch buffers.

Every limit is global across workers because it lives here. Concurrency slots are zset
members scored by the holder's lease expiry, so a killed worker's slot frees itself when
its lease runs out; runs over a limit wait in a per-key zset (FIFO, or by priority) and
are released when a slot frees, not by re-polling the broker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .keys import Keys

# Take concurrency slots (and pass the throttle) before a run's execution starts.
# KEYS: 1 run, 2 timers, 3 throttle key (or any key), 4 registry of waiting queues,
#       then (slots, queue) per concurrency limit
# ARGV: 1 run_id, 2 now_ms, 3 slot expiry ms, 4 throttle emission interval ms ('' = none),
#       5 throttle tolerance ms, 6 queue score, then one limit per concurrency limit
# Returns {'ok'}, {'wait'} (queued for a slot) or {'later', when_ms} (throttled).
GATE = """
local now = tonumber(ARGV[2])
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled'
   or status == 'skipped' then return {'ok'} end
local wake = redis.call('HGET', KEYS[1], 'wake_at')
if wake and wake ~= '' and tonumber(wake) > now then return {'ok'} end
local n = #ARGV - 6
for i = 1, n do
  local slots, queue = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if not redis.call('ZSCORE', slots, ARGV[1]) and
     redis.call('ZCARD', slots) >= tonumber(ARGV[6 + i]) then
    redis.call('ZADD', queue, 'NX', ARGV[6], ARGV[1])
    redis.call('HSET', KEYS[4], queue, slots .. '|' .. ARGV[6 + i])
    -- A slot reserved for this run in another limit (by RELEASE) is given back; the
    -- pump's reconcile starts whoever waits for it.
    for j = 1, n do
      if j ~= i then redis.call('ZREM', KEYS[3 + 2 * j], ARGV[1]) end
    end
    return {'wait'}
  end
end
if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  local interval, tolerance = tonumber(ARGV[4]), tonumber(ARGV[5])
  local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then
    redis.call('HSET', KEYS[1], 'wake_at', allow_at)
    redis.call('ZADD', KEYS[2], allow_at, ARGV[1])
    return {'later', tostring(allow_at)}
  end
  redis.call('SET', KEYS[3], tostring(tat + interval), 'PX', tostring(tolerance + 2 * interval + 1000))
end
for i = 1, n do redis.call('ZADD', KEYS[3 + 2 * i], ARGV[3], ARGV[1]) end
for i = 1, n do redis.call('ZREM', KEYS[4 + 2 * i], ARGV[1]) end
return {'ok'}
"""

# Free a run's slots (run_id '' frees none: a reconcile pass) and wake as many waiting runs
# as there is room for; returns their ids, which the caller enqueues. Each woken run gets
# its slot reserved until ARGV[4] (its gate then takes it): without the reservation, a
# second release or a reconcile before the woken run's gate would see the slot free and
# wake another run too, out of priority order. Its timer is due at the redispatch deadline,
# in case the caller dies before enqueueing it.
# KEYS: 1 timers, 2 registry, then (slots, queue) per limit
# ARGV: 1 run_id, 2 now_ms, 3 redispatch deadline ms, 4 reservation expiry ms, then one
#       limit per slots key
RELEASE = """
local now = tonumber(ARGV[2])
local out = {}
local n = #ARGV - 4
for i = 1, n do
  local slots, queue = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  if ARGV[1] ~= '' then redis.call('ZREM', slots, ARGV[1]) end
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local room = tonumber(ARGV[4 + i]) - redis.call('ZCARD', slots)
  if room > 0 then
    local popped = redis.call('ZPOPMIN', queue, room)
    for j = 1, #popped, 2 do
      redis.call('ZADD', slots, ARGV[4], popped[j])
      redis.call('ZADD', KEYS[1], ARGV[3], popped[j])
      out[#out + 1] = popped[j]
    end
  end
  if redis.call('ZCARD', queue) == 0 then redis.call('HDEL', KEYS[2], queue) end
end
return out
"""

# Rate limit on run creation: a sliding log of the last `limit` starts per key.
# KEYS: 1 the log (zset)   ARGV: 1 now_ms, 2 period_ms, 3 limit, 4 member
# Returns 1 when the run may be created, 0 when it is skipped.
RATE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Claim a key for a run once per window (idempotency) or while it is active (singleton).
# KEYS: 1 claim key   ARGV: 1 run_id, 2 now_ms, 3 window ms ('' = until released)
# Returns '' when claimed, else the run id holding it (and when it claimed, 'id|ms').
CLAIM_KEY = """
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, '|', 1, true)
  local at = tonumber(string.sub(held, sep + 1))
  if ARGV[3] == '' or tonumber(ARGV[2]) - at < tonumber(ARGV[3]) then return held end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2])
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2) end
return ''
"""

# Release a singleton key if this run still holds it.
# KEYS: 1 claim key   ARGV: 1 run_id
UNCLAIM_KEY = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
end
return 1
"""

# Debounce or batch: add an event to the key's pending run, or open a new pending run.
# KEYS: 1 buffer (hash: run, first_at, count), 2 the new run's record, 3 timers,
#       4 function history, 5 event_runs of the event
# ARGV: 1 mode ('debounce' | 'batch'), 2 new run id, 3 now_ms, 4 period ms (debounce
#       quiet period / batch timeout), 5 cap ms (debounce timeout, '' = none),
#       6 max batch size, 7 event json, 8 new run meta json, 9 retention ms
# Returns {run_id, 'new'|'added'|'full'}: 'full' when a batch reached its size (enqueue
# it now).
BUFFER = """
local now = tonumber(ARGV[3])
local run = redis.call('HGET', KEYS[1], 'run')
if run then
  local run_key = string.gsub(KEYS[2], '{[^}]*}', '{' .. run .. '}', 1)
  if redis.call('HGET', run_key, 'status') == 'queued'
     and redis.call('HEXISTS', run_key, 'started_at') == 0 then
    local events = redis.call('HGET', run_key, 'events')
    if ARGV[1] == 'debounce' then
      events = '[' .. ARGV[7] .. ']'
    else
      events = string.sub(events, 1, -2) .. ',' .. ARGV[7] .. ']'
    end
    redis.call('HSET', run_key, 'events', events)
    local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
    redis.call('SADD', KEYS[5], run)
    redis.call('PEXPIRE', KEYS[5], ARGV[9])
    if ARGV[1] == 'batch' then
      if count >= tonumber(ARGV[6]) then
        redis.call('DEL', KEYS[1])
        redis.call('HDEL', run_key, 'wake_at')
        redis.call('ZADD', KEYS[3], now, run)
        return {run, 'full'}
      end
      return {run, 'added'}
    end
    local wake = now + tonumber(ARGV[4])
    if ARGV[5] ~= '' then
      local cap = tonumber(redis.call('HGET', KEYS[1], 'first_at')) + tonumber(ARGV[5])
      if wake > cap then wake = cap end
    end
    redis.call('HSET', run_key, 'wake_at', wake)
    redis.call('ZADD', KEYS[3], wake, run)
    return {run, 'added'}
  end
end
local wake = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'run', ARGV[2], 'first_at', now, 'count', 1)
redis.call('HSET', KEYS[2], 'status', 'queued', 'created_at', now, 'attempt', '0',
           'meta', ARGV[8], 'events', '[' .. ARGV[7] .. ']', 'wake_at', wake)
redis.call('ZADD', KEYS[3], wake, ARGV[2])
redis.call('ZADD', KEYS[4], now, ARGV[2])
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('PEXPIRE', KEYS[5], ARGV[9])
if ARGV[1] == 'batch' and tonumber(ARGV[6]) <= 1 then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[3], now, ARGV[2])
  return {ARGV[2], 'full'}
end
return {ARGV[2], 'new'}
"""

# A buffered run starts: close its buffer so later events open a new one.
# KEYS: 1 buffer   ARGV: 1 run_id
CLOSE_BUFFER = """
if redis.call('HGET', KEYS[1], 'run') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


@dataclass(frozen=True)
class SlotSet:
    """One concurrency limit as it applies to one run: its slots, queue and limit."""

    slots: str
    queue: str
    limit: int


class FlowStore:
    """Flow-control state in Redis (shares the run store's client and key prefix)."""

    def __init__(self, client: redis.Redis[str], keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._gate = client.register_script(GATE)
        self._release = client.register_script(RELEASE)
        self._rate = client.register_script(RATE)
        self._claim = client.register_script(CLAIM_KEY)
        self._unclaim = client.register_script(UNCLAIM_KEY)
        self._buffer = client.register_script(BUFFER)
        self._close = client.register_script(CLOSE_BUFFER)

    def flow_key(self, kind: str, scope: str, value: str) -> str:
        return f"{self.keys.prefix}:flow:{kind}:{scope}:{value}"

    @property
    def registry(self) -> str:
        """Hash: wait queue key -> 'slots key|limit', for queues that hold runs."""
        return f"{self.keys.prefix}:flow:waiting"

    def gate(self, run_id: str, now_ms: int, slot_exp_ms: int, slots: Sequence[SlotSet],
             throttle: tuple[str, int, int] | None, queue_score: float) -> tuple[str, int]:
        keys = [self.keys.run(run_id), self.keys.timers,
                throttle[0] if throttle else self.keys.run(run_id), self.registry]
        for s in slots:
            keys += [s.slots, s.queue]
        args: list[Any] = [run_id, now_ms, slot_exp_ms,
                           throttle[1] if throttle else "", throttle[2] if throttle else 0,
                           queue_score, *[s.limit for s in slots]]
        raw = self._gate(keys=keys, args=args)
        return str(raw[0]), int(raw[1]) if len(raw) > 1 else 0

    def release(self, run_id: str, slots: Sequence[SlotSet], now_ms: int,
                deadline_ms: int, reserve_until_ms: int) -> list[str]:
        if not slots:
            return []
        keys = [self.keys.timers, self.registry]
        for s in slots:
            keys += [s.slots, s.queue]
        return list(self._release(keys=keys, args=[run_id, now_ms, deadline_ms,
                                                   reserve_until_ms,
                                                   *[s.limit for s in slots]]))

    def waiting_queues(self) -> list[SlotSet]:
        out = []
        for queue, raw in self.client.hgetall(self.registry).items():
            slots, _, limit = raw.rpartition("|")
            out.append(SlotSet(slots=slots, queue=queue, limit=int(limit)))
        return out

    def renew_slots(self, entries: Sequence[tuple[str, Sequence[str]]], exp_ms: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for run_id, slot_keys in entries:
            for key in slot_keys:
                pipe.zadd(key, {run_id: exp_ms}, xx=True)
        pipe.execute()

    def rate(self, key: str, now_ms: int, period_ms: int, limit: int, member: str) -> bool:
        return bool(self._rate(keys=[key], args=[now_ms, period_ms, limit, member]))

    def claim(self, key: str, run_id: str, now_ms: int, window_ms: int | None) -> str:
        held = self._claim(keys=[key], args=[run_id, now_ms,
                                             "" if window_ms is None else window_ms])
        return str(held).split("|", 1)[0] if held else ""

    def unclaim(self, key: str, run_id: str) -> None:
        self._unclaim(keys=[key], args=[run_id])

    def buffer(self, mode: str, buffer_key: str, run_id: str, function_id: str,
               event: dict[str, Any], meta: str, now_ms: int, period_ms: int,
               cap_ms: int | None, max_size: int, retention_ms: int) -> tuple[str, str]:
        k = self.keys
        raw = self._buffer(
            keys=[buffer_key, k.run(run_id), k.timers, k.function_runs(function_id),
                  k.event_runs(event["id"])],
            args=[mode, run_id, now_ms, period_ms, "" if cap_ms is None else cap_ms, max_size,
                  json.dumps(event, separators=(",", ":")), meta, retention_ms])
        return str(raw[0]), str(raw[1])

    def close_buffer(self, buffer_key: str, run_id: str) -> None:
        self._close(keys=[buffer_key], args=[run_id])
