-- Write step records and extend the lease, fenced by the lease token: an execution whose
-- lease was taken over writes nothing.
-- KEYS: 1 run, 2 steps, 3 leases
-- ARGV: 1 run_id, 2 token, 3 lease_expires_ms, then (step key, record json) pairs
-- Returns 1; 0 when the lease is lost; -1 when a cancel was requested (the records are
-- written, the run must stop).
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
if #ARGV > 3 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
redis.call('HSET', KEYS[1], 'lease_exp', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return -1 end
return 1
