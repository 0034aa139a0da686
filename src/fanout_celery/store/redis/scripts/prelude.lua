-- Prepended to every script by lua.py.
-- The statuses a run never leaves; written once, here (model/records.py has the same set).
local FINAL = {completed = true, failed = true, cancelled = true, skipped = true}

-- The server's clock, in ms: every ordering a guarantee depends on (an event noted before
-- or after a wait registered) uses it, so clients' clocks may disagree.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function is_final(status)
  return status ~= false and status ~= nil and FINAL[status] == true
end

-- A run just became final: wake whoever waits for it (wait_finished blocks on this list).
local DONE_NOTICE_MS = 60000
local function notify_done(key, status)
  redis.call('DEL', key)
  redis.call('RPUSH', key, status)
  redis.call('PEXPIRE', key, DONE_NOTICE_MS)
end

-- A step record's status: records leave it out when completed (model/records.py,
-- pack_step); those written before that format always have it under its full name.
local function step_status(record)
  local rec = cjson.decode(record)
  return rec['s'] or rec['status'] or 'completed'
end

-- What a run's task message is routed by: the "meta" field of the earlier layout, then
-- the fields the compact layout keeps in line (store/redis/base.py: ROUTE_FIELDS).
local function route(run)
  return redis.call('HMGET', run, 'meta', 'task', 'queue', 'event_name', 'parent_task',
                    'root_task', 'priority', 'function')
end

-- The runs an event started (keys.py: event_runs): a hash of run id -> '', which Redis 7.0
-- keeps as a listpack while small (it keeps a set of strings as a hash table); a set
-- when written before this layout, and then until it expires, or when as_set is '1'
-- (fanout_compact_records = False: the layout processes of 0.1 read) and there is no
-- list yet. kind: the key's TYPE, when the caller read it.
local function list_run(key, run_id, ttl, as_set, kind)
  kind = kind or redis.call('TYPE', key).ok
  if kind == 'set' or (kind == 'none' and as_set == '1') then
    redis.call('SADD', key, run_id)
  else
    redis.call('HSET', key, run_id, '')
  end
  redis.call('PEXPIRE', key, ttl)
end

local function is_listed(key, run_id, kind)
  if kind == 'none' then return false end
  if kind == 'set' then return redis.call('SISMEMBER', key, run_id) == 1 end
  return redis.call('HEXISTS', key, run_id) == 1
end
