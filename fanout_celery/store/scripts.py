"""Lua scripts. Each documents its KEYS and ARGV at the top.

Scripts touch one run's keys plus the global index zsets (timers, leases, dispatch),
so that a run's state and its place in the indexes change together.
"""

# Store a chunk of events and create the runs they start, each unless it exists (run ids
# are deterministic: this is the SET NX that makes a re-sent event, a replayed send_event
# or two beats start one run). One call per chunk keeps the fan-out to one round trip.
# KEYS: 1 dispatch, 2 events index, then one key per event (its record), then three per
#       run (run, function_runs, event_runs)
# ARGV: 1 now_ms, 2 dispatch_deadline_ms, 3 retention_ms, 4 event count, then per event
#       (id, json), then per run (run_id, meta json, events json)
# Returns, per run, 1 if this call created it, else 0.
CREATE_BATCH = """
local now, deadline, retention = ARGV[1], ARGV[2], ARGV[3]
local events = tonumber(ARGV[4])
local a = 5
for i = 1, events do
  redis.call('SET', KEYS[2 + i], ARGV[a + 1], 'NX', 'PX', retention)
  redis.call('ZADD', KEYS[2], 'NX', now, ARGV[a])
  a = a + 2
end
local out = {}
local k = 3 + events
local i = 1
while a <= #ARGV do
  local run_id = ARGV[a]
  if redis.call('EXISTS', KEYS[k]) == 1 then
    out[i] = 0
  else
    redis.call('HSET', KEYS[k], 'status', 'queued', 'created_at', now, 'attempt', '0',
               'meta', ARGV[a + 1], 'events', ARGV[a + 2])
    redis.call('ZADD', KEYS[1], deadline, run_id)
    redis.call('ZADD', KEYS[k + 1], now, run_id)
    redis.call('SADD', KEYS[k + 2], run_id)
    redis.call('PEXPIRE', KEYS[k + 2], retention)
    out[i] = 1
  end
  a = a + 3
  k = k + 3
  i = i + 1
end
return out
"""

# Record a run that flow control skipped (rate limit, singleton, idempotency), unless the
# run exists: a re-sent event whose run was created before must leave that run as it is.
# KEYS: 1 run, 2 function_runs, 3 event_runs
# ARGV: 1 run_id, 2 now_ms, 3 retention_ms, 4 meta json, 5 events json, 6 error json
# Returns 1 when recorded, 0 when the run already existed.
CREATE_SKIPPED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'skipped', 'created_at', ARGV[2], 'ended_at', ARGV[2],
           'attempt', '0', 'meta', ARGV[4], 'events', ARGV[5], 'error', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# Take the lease on a run and load its whole state in one round trip.
# KEYS: 1 run, 2 steps, 3 leases, 4 timers, 5 dispatch
# ARGV: 1 run_id, 2 token, 3 now_ms, 4 lease_expires_ms
# Returns {'ok', run fields..., '|', step fields...} or {'done'|'busy'|'early'|'missing', info}
START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {'done', status}
end
local now = tonumber(ARGV[3])
local lease = redis.call('HGET', KEYS[1], 'lease')
local lease_exp = tonumber(redis.call('HGET', KEYS[1], 'lease_exp') or '0')
if lease and lease ~= '' and lease_exp > now then return {'busy', tostring(lease_exp)} end
local wake = redis.call('HGET', KEYS[1], 'wake_at')
if wake and wake ~= '' and tonumber(wake) > now then
  -- Early delivery (a duplicate message, or a clock a little behind the pump's): put
  -- the timer back where it belongs rather than waiting for the re-dispatch deadline.
  redis.call('ZADD', KEYS[4], wake, ARGV[1])
  return {'early', wake}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'lease', ARGV[2], 'lease_exp', ARGV[4])
redis.call('HDEL', KEYS[1], 'wake_at')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'executions', 1)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
local out = {'ok'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
out[#out + 1] = '|'
for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do out[#out + 1] = v end
return out
"""

# Write a step checkpoint and/or change the run's state, fenced by the lease token: an
# execution whose lease was taken over writes nothing.
# KEYS: 1 run, 2 steps, 3 leases, 4 timers, 5 waits index of the step's event (or any key)
# ARGV: 1 run_id, 2 token, 3 mode ('step' | 'park' | 'finish'), 4 step_key ('' = none),
#       5 step_json ('' = none), 6 ms (step: new lease expiry; park: wake time or '';
#       finish: retention), 7 expected status of the step's current record ('' = any),
#       8 field to delete from the waits index ('' = none), 9.. field, value pairs for the run
# Returns 1; 0 when the lease is lost; -1 when a cancel was requested (the checkpoint is
# written, the run must stop); {'changed', record} when the step's record is no longer in
# the expected status (an event or a child run resolved it meanwhile).
COMMIT = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
if ARGV[7] ~= '' then
  local cur = redis.call('HGET', KEYS[2], ARGV[4])
  if not cur or cjson.decode(cur)['status'] ~= ARGV[7] then return {'changed', cur or ''} end
end
if ARGV[8] ~= '' then redis.call('HDEL', KEYS[5], ARGV[8]) end
if ARGV[4] ~= '' and ARGV[5] ~= '' then redis.call('HSET', KEYS[2], ARGV[4], ARGV[5]) end
if #ARGV > 8 then redis.call('HSET', KEYS[1], unpack(ARGV, 9)) end
local mode = ARGV[3]
local cancel = redis.call('HEXISTS', KEYS[1], 'cancel') == 1
if mode == 'step' then
  redis.call('HSET', KEYS[1], 'lease_exp', ARGV[6])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
  if cancel then return -1 end
  return 1
end
if mode == 'park' and cancel then return -1 end
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp')
redis.call('ZREM', KEYS[3], ARGV[1])
if mode == 'park' then
  if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'wake_at', ARGV[6])
    redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
  end
  return 1
end
redis.call('HDEL', KEYS[1], 'wake_at', 'cancel')
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
"""

# Renew a lease if this execution still holds it.
# KEYS: 1 run, 2 leases   ARGV: 1 run_id, 2 token, 3 lease_expires_ms
RENEW = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'lease_exp', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# Claim what is due in one index: move each due member's score to the re-dispatch
# deadline (so a pump that dies before publishing is covered) and return them.
# KEYS: 1 zset   ARGV: 1 now_ms, 2 redispatch_deadline_ms, 3 limit
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""

# A lease found expired by the pump: if the run's own record agrees, drop the lease (the
# dead execution can no longer commit) and schedule the run again.
# KEYS: 1 run, 2 leases, 3 timers   ARGV: 1 run_id, 2 now_ms, 3 redispatch_deadline_ms
# Returns 1 when the run must be re-enqueued now.
EXPIRE_LEASE = """
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
"""

# Record events of one name as recently sent (for waits registered just after them) and
# return who waits for that name: step waiters and cancel_on subscriptions.
# KEYS: 1 recent zset of the name, 2 waits hash of the name, 3 cancels hash of the name
# ARGV: 1 now_ms, 2 keep_after_ms (older entries are trimmed), 3 ttl_ms, 4.. event ids
NOTE_EVENTS = """
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
"""

# Register a wait_for_event and park the run, atomically with reading the events of that
# name sent since `since`: an event sent before this script is among them, one sent
# after it finds the waiter. Nothing falls in between.
# KEYS: 1 run, 2 steps, 3 leases, 4 timers, 5 waits hash, 6 recent zset
# ARGV: 1 run_id, 2 token, 3 step_key, 4 step_json, 5 waits field, 6 waiter_json,
#       7 timeout_ms (wake time), 8 since_ms
# Returns {1, event ids sent since} or {0} when the lease is lost, {-1} on cancel.
REGISTER_WAIT = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return {0} end
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then return {-1} end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[5], ARGV[6])
redis.call('HSET', KEYS[1], 'status', 'waiting', 'wake_at', ARGV[7])
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
return {1, redis.call('ZRANGEBYSCORE', KEYS[6], ARGV[8], '+inf')}
"""

# The end of RESOLVE and JOIN: a parked run (status waiting or sleeping) becomes queued and
# due now (its timer at the re-dispatch deadline covers a lost publish); returns the run's
# meta so the caller can publish it at once. Expects `status` and `deadline` locals, KEYS[1]
# the run and KEYS[3] the timers.
WAKE_PARKED = """
if status == 'waiting' or status == 'sleeping' then
  redis.call('HSET', KEYS[1], 'status', 'queued')
  redis.call('HDEL', KEYS[1], 'wake_at')
  redis.call('ZADD', KEYS[3], deadline, ARGV[1])
  return {redis.call('HGET', KEYS[1], 'meta') or '{}'}
end
return 1
"""

# Resolve a waiting step from outside its run (a matching event, a finished child run):
# write its record if it is still in the expected status, and wake the run if parked.
# KEYS: 1 run, 2 steps, 3 timers, 4 waits hash (or any key)
# ARGV: 1 run_id, 2 step_key, 3 expected status, 4 record_json, 5 waits field ('' = none),
#       6 redispatch_deadline_ms
# Returns {meta} when the run was parked and must be enqueued now, 1 when it is
# executing (it sees the record when it parks), 0 when there was nothing to resolve.
RESOLVE = """
if ARGV[5] ~= '' then redis.call('HDEL', KEYS[4], ARGV[5]) end
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if not cur or cjson.decode(cur)['status'] ~= ARGV[3] then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
local deadline = ARGV[6]
""" + WAKE_PARKED

# Record one branch result of a parallel group in the parent; when every branch has a
# result, mark the group joined and wake the parent if it is parked.
# KEYS: 1 parent run, 2 parent steps, 3 timers
# ARGV: 1 parent run id, 2 group key, 3 branch field, 4 branch record, 5 branch count,
#       6 joined group record, 7 redispatch_deadline_ms
# Returns {meta} when the parent must be enqueued now, else 0/1.
JOIN = """
redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4])
local n = tonumber(ARGV[5])
for i = 0, n - 1 do
  if redis.call('HEXISTS', KEYS[2], ARGV[2] .. '[' .. i .. ']') == 0 then return 0 end
end
local group = redis.call('HGET', KEYS[2], ARGV[2])
if not group or cjson.decode(group)['status'] ~= 'parallel' then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[6])
local status = redis.call('HGET', KEYS[1], 'status')
local deadline = ARGV[7]
""" + WAKE_PARKED

# Cancel a run: at once when it is queued or parked, or by flag when it is executing (the
# execution stops at its next step boundary).
# KEYS: 1 run, 2 steps, 3 timers, 4 leases, 5 dispatch
# ARGV: 1 run_id, 2 now_ms, 3 retention_ms, 4 error_json
# Returns 'cancelled', 'requested', 'final' or 'missing'.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'completed' or status == 'failed' or status == 'cancelled'
   or status == 'skipped' then return 'final' end
local lease = redis.call('HGET', KEYS[1], 'lease')
local lease_exp = tonumber(redis.call('HGET', KEYS[1], 'lease_exp') or '0')
if lease and lease ~= '' and lease_exp > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'cancel', ARGV[4])
  return 'requested'
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'ended_at', ARGV[2], 'error', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease', 'lease_exp', 'wake_at', 'cancel')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 'cancelled'
"""
