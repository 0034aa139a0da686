-- Renew a lease if this execution still holds it.
-- KEYS: 1 run, 2 leases   ARGV: 1 run_id, 2 token, 3 lease_expires_ms
-- Returns 1 when renewed, 0 when the lease is no longer this execution's.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'lease_exp', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
