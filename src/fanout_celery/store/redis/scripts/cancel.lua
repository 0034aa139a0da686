-- Cancel a run: at once when it is queued or parked, or by flag when it is executing (the
-- execution stops at its next step boundary).
-- KEYS: 1 run, 2 steps, 3 timers, 4 leases, 5 dispatch, 6 done, 7 archive
-- ARGV: 1 run_id, 2 now_ms, 3 retention_ms, 4 error_json, 5 archive (1: for the history
--       sink)
-- Returns 'cancelled', 'requested', 'final' or 'missing'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if is_final(status) then return 'final' end
local lease = redis.call('HGET', KEYS[1], 'lease')
local lease_exp = tonumber(redis.call('HGET', KEYS[1], 'lease_exp') or '0')
if lease and lease ~= '' and lease_exp > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'cancel', ARGV[4])
  return 'requested'
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'ended_at', ARGV[2], 'error', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp', 'wake_at', 'cancel')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
notify_done(KEYS[6], 'cancelled')
if ARGV[5] == '1' then redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1]) end
return 'cancelled'
