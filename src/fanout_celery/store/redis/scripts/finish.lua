-- Mark a run final, fenced by the lease token; it expires after the retention.
-- KEYS: 1 run, 2 steps, 3 leases, 4 timers, 5 done, 6 archive (runs for the history sink)
-- ARGV: 1 run_id, 2 token, 3 status, 4 retention_ms, 5 steps_retention_ms (the step
--       records' own, at most the run's), 6 archive_at (0: no history sink), 7 n: step
--       records written first (buffered checkpoints), 8..7+2n their (key, record)
--       pairs, then field, value pairs (an empty value removes the field)
-- Returns 1, or 0 when the lease is lost.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
local n = tonumber(ARGV[7])
if n > 0 then redis.call('HSET', KEYS[2], unpack(ARGV, 8, 7 + 2 * n)) end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
-- An empty value removes its field (the error of an earlier attempt, once a run completes).
for i = 8 + 2 * n, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if ARGV[6] ~= '0' then redis.call('ZADD', KEYS[6], ARGV[6], ARGV[1]) end
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp', 'wake_at', 'cancel')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
notify_done(KEYS[5], ARGV[3])
return 1
