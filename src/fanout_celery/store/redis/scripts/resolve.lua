--! include wake
-- Resolve a waiting step from outside its run (a matching event, a finished child run):
-- write its record if it is still in the expected status, and wake the run if parked.
-- KEYS: 1 run, 2 steps, 3 timers, 4 waits hash (or any key)
-- ARGV: 1 run_id, 2 step_key, 3 expected status, 4 record_json, 5 waits field ('' = none),
--       6 redispatch_deadline_ms
-- Returns the run's route (prelude.lua: route) when the run was parked and must be enqueued now, 1 when it is
-- executing (it sees the record when it parks), 0 when there was nothing to resolve.
if ARGV[5] ~= '' then redis.call('HDEL', KEYS[4], ARGV[5]) end
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if not cur or step_status(cur) ~= ARGV[3] then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if not status or is_final(status) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return wake_parked(KEYS[1], KEYS[3], ARGV[1], ARGV[6])
