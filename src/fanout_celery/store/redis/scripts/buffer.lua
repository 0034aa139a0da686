-- Debounce or batch: add an event to the key's pending run, or open a new pending run.
-- The caller read the buffer's pending run id first and passes that run's key: if the
-- buffer changed meanwhile the script returns {'retry'} and the caller reads again.
-- KEYS: 1 buffer (hash: run, first_at, count), 2 the pending run's record (or the new
--       run's when there is none), 3 the new run's record, 4 timers, 5 function history,
--       6 event_runs of the event
-- ARGV: 1 mode ('debounce' | 'batch'), 2 new run id, 3 now_ms, 4 period ms (debounce
--       quiet period / batch timeout), 5 cap ms (debounce timeout, '' = none),
--       6 max batch size, 7 event json, 8 new run meta json, 9 retention ms,
--       10 the pending run id the caller read ('' = none), 11 list runs in a set ('1' or '')
-- Returns {run_id, 'new'|'added'|'full'} ('full': a batch reached its size, enqueue it
-- now) or {'retry'}.
local now = tonumber(ARGV[3])
local run = redis.call('HGET', KEYS[1], 'run')
if (run or '') ~= ARGV[10] then return {'retry'} end
if run then
  local run_key = KEYS[2]
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
    list_run(KEYS[6], run, ARGV[9], ARGV[11])
    if ARGV[1] == 'batch' then
      if count >= tonumber(ARGV[6]) then
        redis.call('DEL', KEYS[1])
        redis.call('HDEL', run_key, 'wake_at')
        redis.call('ZADD', KEYS[4], now, run)
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
    redis.call('ZADD', KEYS[4], wake, run)
    return {run, 'added'}
  end
end
local wake = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'run', ARGV[2], 'first_at', now, 'count', 1)
redis.call('HSET', KEYS[3], 'status', 'queued', 'created_at', now, 'attempt', '0',
           'meta', ARGV[8], 'events', '[' .. ARGV[7] .. ']', 'wake_at', wake)
redis.call('ZADD', KEYS[4], wake, ARGV[2])
redis.call('ZADD', KEYS[5], now, ARGV[2])
list_run(KEYS[6], ARGV[2], ARGV[9], ARGV[11])
if ARGV[1] == 'batch' and tonumber(ARGV[6]) <= 1 then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[4], now, ARGV[2])
  return {ARGV[2], 'full'}
end
return {ARGV[2], 'new'}
