-- Register a wait_for_event and park the run, atomically with reading the events of that
-- name sent since `since`: an event sent before this script is among them, one sent
-- after it finds the waiter. Nothing falls in between.
-- KEYS: 1 run, 2 steps, 3 leases, 4 timers, 5 waits hash, 6 recent zset
-- ARGV: 1 run_id, 2 token, 3 step_key, 4 step_json, 5 waits field, 6 waiter_json,
--       7 timeout_ms (wake time), 8 since_ms
-- Returns {1, event ids sent since} or {0} when the lease is lost, {-1} on cancel.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return {0} end
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return {-1} end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[5], ARGV[6])
redis.call('HSET', KEYS[1], 'status', 'waiting', 'wake_at', ARGV[7])
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
return {1, redis.call('ZRANGEBYSCORE', KEYS[6], ARGV[8], '+inf')}
