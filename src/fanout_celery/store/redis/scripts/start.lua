-- Take the lease on a run and load its whole state in one round trip.
-- KEYS: 1 run, 2 steps, 3 leases, 4 timers, 5 dispatch
-- ARGV: 1 run_id, 2 token, 3 now_ms, 4 lease_expires_ms, 5 this attempt's task id ('' = none)
-- Returns {'ok', run fields..., '|', step fields...} or {'done'|'busy'|'early'|'missing', info}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if is_final(status) then return {'done', status} end
local now = tonumber(ARGV[3])
local lease = redis.call('HGET', KEYS[1], 'lease')
local lease_exp = tonumber(redis.call('HGET', KEYS[1], 'lease_exp') or '0')
if lease and lease ~= '' and lease_exp > now then return {'busy', tostring(lease_exp)} end
local wake = redis.call('HGET', KEYS[1], 'wake_at')
if wake and wake ~= '' and tonumber(wake) > now then
  -- Early delivery (a duplicate message, or a clock a little behind the pump's): put
  -- the timer back where it belongs rather than waiting for the re-dispatch deadline.
  redis.call('ZADD', KEYS[4], wake, ARGV[1])
  return {'early', wake}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'lease', ARGV[2], 'lease_exp', ARGV[4])
redis.call('HDEL', KEYS[1], 'wake_at')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'executions', 1)
if ARGV[5] and ARGV[5] ~= '' then
  -- The task ids of the run's attempts (the last 20), comma-separated.
  local attempts = redis.call('HGET', KEYS[1], 'attempts')
  local list = {}
  if attempts and attempts ~= '' then
    for id in string.gmatch(attempts, '[^,]+') do list[#list + 1] = id end
  end
  list[#list + 1] = ARGV[5]
  while #list > 20 do table.remove(list, 1) end
  redis.call('HSET', KEYS[1], 'attempts', table.concat(list, ','))
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
local out = {'ok'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
out[#out + 1] = '|'
for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do out[#out + 1] = v end
return out
