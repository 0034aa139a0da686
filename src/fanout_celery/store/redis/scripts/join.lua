--! include wake
-- Record one branch result of a parallel group in the parent; when every branch has a
-- result, mark the group joined and wake the parent if it is parked.
-- KEYS: 1 parent run, 2 parent steps, 3 timers
-- ARGV: 1 parent run id, 2 group key, 3 branch field, 4 branch record, 5 branch count,
--       6 joined group record, 7 redispatch_deadline_ms
-- Returns the run's route (prelude.lua: route) when the parent must be enqueued now, else 0/1.
redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4])
local n = tonumber(ARGV[5])
for i = 0, n - 1 do
  if redis.call('HEXISTS', KEYS[2], ARGV[2] .. '[' .. i .. ']') == 0 then return 0 end
end
local group = redis.call('HGET', KEYS[2], ARGV[2])
if not group or step_status(group) ~= 'parallel' then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[6])
return wake_parked(KEYS[1], KEYS[3], ARGV[1], ARGV[7])
