-- Register cancel_on entries of one event name: each in the bucket of its match value,
-- its path noted in `cancelpaths` (kept as long as the longest-lived entry needs it).
-- KEYS: 1 cancelpaths hash, then one cancel bucket hash per entry
-- ARGV: then per entry (run id, entry json, match path ('' = none), expiry ms)
local now = server_ms()
for i = 2, #KEYS do
  local a = (i - 2) * 4 + 1
  redis.call('HSET', KEYS[i], ARGV[a], ARGV[a + 1])
  local path, expiry = ARGV[a + 2], tonumber(ARGV[a + 3])
  if path ~= '' then
    local known = redis.call('HGET', KEYS[1], path)
    local added = now
    if known then
      local sep = string.find(known, '|', 1, true)
      local was_expiry = tonumber(string.sub(known, sep + 1))
      if was_expiry > now then
        added = tonumber(string.sub(known, 1, sep - 1))
        if was_expiry > expiry then expiry = was_expiry end
      end
    end
    redis.call('HSET', KEYS[1], path, added .. '|' .. expiry)
  end
end
return 1
