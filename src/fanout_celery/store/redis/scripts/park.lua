-- Park a run: release the lease and set its status (and timer), fenced by the token.
-- A cancel request is answered before anything but the step record is written: the run
-- keeps status 'running' and its lease, so if the worker dies before it finishes the
-- cancel, the lease expires, the pump resumes the run, and the resumed attempt sees the
-- request at once.
-- KEYS: 1 run, 2 steps, 3 leases, 4 timers
-- ARGV: 1 run_id, 2 token, 3 status, 4 wake_at ms ('' = none), 5 step key ('' = none),
--       6 step record ('' = none), 7 expected status of that step ('' = any),
--       8.. field, value pairs for the run
-- Returns 1; 0 when the lease is lost; -1 on a cancel request; {'changed', record} when
-- the step is no longer in the expected status (an event or a child resolved it).
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
if ARGV[7] ~= '' then
  local cur = redis.call('HGET', KEYS[2], ARGV[5])
  if not cur or step_status(cur) ~= ARGV[7] then return {'changed', cur or ''} end
end
if ARGV[5] ~= '' and ARGV[6] ~= '' then redis.call('HSET', KEYS[2], ARGV[5], ARGV[6]) end
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp')
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'wake_at', ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
end
return 1
