-- Write a step record only if the step is still in the expected status (a timeout racing
-- an event or a child run), fenced by the lease token.
-- KEYS: 1 run, 2 steps, 3 leases, 4 waits hash of the step's event (or any key)
-- ARGV: 1 run_id, 2 token, 3 step key, 4 expected status, 5 record json,
--       6 lease_expires_ms, 7 field to delete from the waits hash ('' = none)
-- Returns 1; 0 when the lease is lost; -1 on a cancel request (written);
-- {'changed', record} when the step is no longer in the expected status.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
local cur = redis.call('HGET', KEYS[2], ARGV[3])
if not cur or step_status(cur) ~= ARGV[4] then return {'changed', cur or ''} end
if ARGV[7] ~= '' then redis.call('HDEL', KEYS[4], ARGV[7]) end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[1], 'lease_exp', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return -1 end
return 1
