-- Mark a run final, fenced by the lease token; it expires after the retention.
-- KEYS: 1 run, 2 steps, 3 leases, 4 timers, 5 done
-- ARGV: 1 run_id, 2 token, 3 status, 4 retention_ms, 5 steps_retention_ms (the step
--       records' own, at most the run's), 6 n: step records written first (buffered
--       checkpoints), 7..6+2n their (key, record) pairs, then field, value pairs
-- Returns 1, or 0 when the lease is lost.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
local n = tonumber(ARGV[6])
if n > 0 then redis.call('HSET', KEYS[2], unpack(ARGV, 7, 6 + 2 * n)) end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
if #ARGV > 6 + 2 * n then redis.call('HSET', KEYS[1], unpack(ARGV, 7 + 2 * n)) end
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp', 'wake_at', 'cancel')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
notify_done(KEYS[5], ARGV[3])
return 1
