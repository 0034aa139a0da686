-- Included by resolve.lua and join.lua.
-- A parked run (waiting or sleeping) becomes queued and due now (its timer at the
-- re-dispatch deadline covers a lost publish); returns its route so the caller publishes it
-- at once, or 1 when the run is executing (it sees the new record when it parks).
local function wake_parked(run, timers, run_id, deadline)
  local status = redis.call('HGET', run, 'status')
  if status == 'waiting' or status == 'sleeping' then
    redis.call('HSET', run, 'status', 'queued')
    redis.call('HDEL', run, 'wake_at')
    redis.call('ZADD', timers, deadline, run_id)
    return route(run)
  end
  return 1
end
