-- Included by park_waiting.lua and register_wait.lua.
-- Register a waiter and read the events of its name noted since `since` (server ms),
-- in one script: an event noted before is among those returned, one noted after finds
-- the waiter. Only events that can match are read: those of the waiter's value bucket,
-- when its path was in use (in `waitpaths`) since before `since`, so that every such
-- event was noted in the bucket; else every event of the name since then (the first
-- waiter of a new path). A waiter without a match path reads the first `limit` events.
local function register_waiter(waits, waitpaths, recent, recent_bucket, field, waiter,
                               since, path, path_expiry, limit)
  redis.call('HSET', waits, field, waiter)
  if path == '' then
    return redis.call('ZRANGEBYSCORE', recent, since, '+inf', 'LIMIT', 0, limit)
  end
  local now = server_ms()
  local added, expiry = now, tonumber(path_expiry)
  local known = redis.call('HGET', waitpaths, path)
  if known then
    local sep = string.find(known, '|', 1, true)
    local was_added, was_expiry = tonumber(string.sub(known, 1, sep - 1)),
                                  tonumber(string.sub(known, sep + 1))
    if was_expiry > now then
      added = was_added
      if was_expiry > expiry then expiry = was_expiry end
    end
  end
  redis.call('HSET', waitpaths, path, added .. '|' .. expiry)
  if added < since then
    return redis.call('ZRANGEBYSCORE', recent_bucket, since, '+inf')
  end
  return redis.call('ZRANGEBYSCORE', recent, since, '+inf')
end
