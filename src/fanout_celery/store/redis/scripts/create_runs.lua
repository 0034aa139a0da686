-- Store a chunk of events and create the runs they start, each unless it exists (run ids
-- are deterministic: this is the SET NX that makes a re-sent event, a replayed send_event
-- or two beats start one run). A run its event's run list already names was created
-- before and has expired (retention shorter than the dedupe window): it is not created
-- again while that list lives (the dedupe window). One call per chunk: one round trip.
-- KEYS: 1 dispatch, 2 events index, then one key per event (its record), then three per
--       run (run, function_runs, event_runs)
-- ARGV: 1 '1' to list runs under their event in a set (prelude.lua: list_run), else '',
--       2 dispatch_deadline_ms, 3 keep_events_ms, 4 event count, then per event
--       (id, json), then the count of shared field lists, each (n, then n names and
--       values: the static fields runs share), then per run (run_id, its shared list's
--       number, then '1', event body, event id, event time for a run of one event in the
--       compact layout, else '0', events json: store/redis/base.py, event_fields)
-- Returns, per run, 1 if this call created it, else 0.
local now, deadline, keep, as_set = server_ms(), ARGV[2], ARGV[3], ARGV[1]
local events = tonumber(ARGV[4])
local a = 5
for i = 1, events do
  redis.call('SET', KEYS[2 + i], ARGV[a + 1], 'NX', 'PX', keep)
  redis.call('ZADD', KEYS[2], 'NX', now, ARGV[a])
  a = a + 2
end
local shared = {}
local lists = tonumber(ARGV[a])
a = a + 1
for s = 1, lists do
  local n = tonumber(ARGV[a])
  shared[s] = {unpack(ARGV, a + 1, a + n)}
  a = a + 1 + n
end
local out = {}
local k = 3 + events
local i = 1
while a <= #ARGV do
  local run_id, fields, alone = ARGV[a], shared[tonumber(ARGV[a + 1])], ARGV[a + 2] == '1'
  local listed = redis.call('TYPE', KEYS[k + 2]).ok
  if redis.call('EXISTS', KEYS[k]) == 1 or is_listed(KEYS[k + 2], run_id, listed) then
    out[i] = 0
  else
    if alone then
      redis.call('HSET', KEYS[k], 'status', 'queued', 'created_at', now, 'attempt', '0',
                 'event', ARGV[a + 3], 'event_id', ARGV[a + 4], 'event_ts', ARGV[a + 5],
                 unpack(fields))
    else
      redis.call('HSET', KEYS[k], 'status', 'queued', 'created_at', now, 'attempt', '0',
                 'events', ARGV[a + 3], unpack(fields))
    end
    redis.call('ZADD', KEYS[1], deadline, run_id)
    redis.call('ZADD', KEYS[k + 1], now, run_id)
    list_run(KEYS[k + 2], run_id, keep, as_set, listed)
    out[i] = 1
  end
  a = a + (alone and 6 or 4)
  k = k + 3
  i = i + 1
end
return out
