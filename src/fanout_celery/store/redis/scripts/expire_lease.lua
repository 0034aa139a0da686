-- A lease found expired by the pump: if the run's own record agrees, drop the lease (the
-- dead execution can no longer commit) and schedule the run again.
-- KEYS: 1 run, 2 leases, 3 timers   ARGV: 1 run_id, 2 now_ms, 3 redispatch_deadline_ms
-- Returns 1 when the run must be re-enqueued now.
local lease_exp = redis.call('HGET', KEYS[1], 'lease_exp')
if lease_exp and tonumber(lease_exp) > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], lease_exp, ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return 0 end
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp')
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
