--! include waiter
-- Register a wait_for_event and park the run, atomically with reading the events of that
-- name noted since the run was created, both by the server's clock: an event noted
-- before this script is among them, one noted after it finds the waiter. Nothing falls
-- in between, whatever the clients' clocks say: not an event sent by the run's previous
-- step (a send_event, or a webhook its call triggered), nor one sent while it executed.
-- The caller drops the events an earlier wait of the run consumed; the recent lists keep
-- the last fanout_wait_lookback of events only. Which events are read: see waiter.lua.
-- KEYS: 1 run, 2 steps, 3 leases, 4 timers, 5 wait bucket hash, 6 waitpaths hash,
--       7 recent zset of the name, 8 recent zset of the waiter's bucket (or any key)
-- ARGV: 1 run_id, 2 token, 3 step_key, 4 step_json, 5 waits field, 6 waiter_json,
--       7 timeout_ms (wake time), 8 match path ('' = none), 9 path expiry ms,
--       10 events to read for a waiter without a match path
-- Returns {1, event ids noted since} or {0} when the lease is lost, {-1} on cancel.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return {0} end
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return {-1} end
local since = tonumber(redis.call('HGET', KEYS[1], 'created_at') or '0')
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'waiting', 'wake_at', ARGV[7])
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
return {1, register_waiter(KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[5], ARGV[6], since,
                          ARGV[8], ARGV[9], ARGV[10])}
