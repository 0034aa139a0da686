-- Take concurrency slots (and pass the throttle) before a run's execution starts.
-- On one Redis the script reads the run itself; on a cluster the run lives in another
-- slot, so the caller reads its status, wake time and whether it started, and passes
-- them (ARGV 7), and a throttled run's timer goes to the woken-runs zset of the slots.
-- KEYS: 1 run (or, with ARGV 7, any key of this slot), 2 timers (or the woken runs),
--       3 throttle key (or any key), 4 registry of waiting queues,
--       then (slots, queue) per concurrency limit
-- ARGV: 1 run_id, 2 now_ms, 3 slot expiry ms, 4 throttle emission interval ms ('' = none),
--       5 throttle tolerance ms, 6 queue score, 7 '' or 'status|wake_at|started (1/0)',
--       then (limit, registry entry) per limit
-- Returns {'ok'}, {'wait'} (queued for a slot) or {'later', when_ms} (throttled).
local now = tonumber(ARGV[2])
local given = ARGV[7] ~= ''
local status, wake, started
if given then
  local sep1 = string.find(ARGV[7], '|', 1, true)
  local sep2 = string.find(ARGV[7], '|', sep1 + 1, true)
  status = string.sub(ARGV[7], 1, sep1 - 1)
  wake = string.sub(ARGV[7], sep1 + 1, sep2 - 1)
  started = string.sub(ARGV[7], sep2 + 1) == '1'
  if status == '' then status = false end
else
  status = redis.call('HGET', KEYS[1], 'status')
  wake = redis.call('HGET', KEYS[1], 'wake_at')
  started = redis.call('HEXISTS', KEYS[1], 'started_at') == 1
end
if not status or is_final(status) then return {'ok'} end
if wake and wake ~= '' and tonumber(wake) > now then return {'ok'} end
local n = (#ARGV - 7) / 2
for i = 1, n do
  local slots, queue = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local limit = tonumber(ARGV[6 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if not redis.call('ZSCORE', slots, ARGV[1]) and redis.call('ZCARD', slots) >= limit then
    redis.call('ZADD', queue, 'NX', ARGV[6], ARGV[1])
    redis.call('HSET', KEYS[4], queue, ARGV[7 + 2 * i])
    -- A slot reserved for this run in another limit (by release) is given back; the
    -- pump's reconcile starts whoever waits for it.
    for j = 1, n do
      if j ~= i then redis.call('ZREM', KEYS[3 + 2 * j], ARGV[1]) end
    end
    return {'wait'}
  end
end
if ARGV[4] ~= '' and not started then
  local interval, tolerance = tonumber(ARGV[4]), tonumber(ARGV[5])
  local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then
    if not given then redis.call('HSET', KEYS[1], 'wake_at', allow_at) end
    redis.call('ZADD', KEYS[2], allow_at, ARGV[1])
    return {'later', tostring(allow_at)}
  end
  redis.call('SET', KEYS[3], tostring(tat + interval), 'PX',
             tostring(tolerance + 2 * interval + 1000))
end
for i = 1, n do redis.call('ZADD', KEYS[3 + 2 * i], ARGV[3], ARGV[1]) end
for i = 1, n do redis.call('ZREM', KEYS[4 + 2 * i], ARGV[1]) end
-- On a cluster a woken run's timer is in the woken-runs zset: it is starting now.
if given then redis.call('ZREM', KEYS[2], ARGV[1]) end
return {'ok'}
