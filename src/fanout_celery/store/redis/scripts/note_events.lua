-- Note events of one name as recently sent (for waits registered just after them), and
-- return only the waiters and cancel_on entries their values can match.
--
-- Waiters are kept in buckets by match value: a waiter of `data.user_id == 7` sits in the
-- bucket `data.user_id=<digest of 7>`, a waiter without a match in the bucket `*`. The
-- caller computes, for the paths waiters use (`waitpaths:<name>`), the bucket of each
-- event and passes those keys. If the paths it assumed are not the current ones (a
-- waiter with a new path registered meanwhile), nothing is written and the current paths
-- are returned: the caller computes the buckets again and calls once more. So an event
-- is always noted under the buckets of every path in use at that moment.
-- Events are dated by the server's clock.
-- KEYS: 1 recent zset of the name, 2 waitpaths hash, 3 cancelpaths hash, then R recent
--       bucket zsets, then W wait bucket hashes, then C cancel bucket hashes
-- ARGV: 1 lookback ms, 2 wait paths assumed (sorted, comma-joined), 3 cancel paths assumed,
--       4 R, 5 W, 6 C, 7 number of event ids N, then N event ids, then per recent bucket
--       its number of ids and those ids
-- Returns {'paths', wait paths, cancel paths} or {wait rows, cancel rows} (flat
-- field/value lists of every bucket read).
local now = server_ms()

local function live_paths(key)
  local out, stale = {}, {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local sep = string.find(flat[i + 1], '|', 1, true)
    if tonumber(string.sub(flat[i + 1], sep + 1)) > now then
      out[#out + 1] = flat[i]
    else
      stale[#stale + 1] = flat[i]
    end
  end
  table.sort(out)
  return table.concat(out, ','), stale
end

local waits, stale_waits = live_paths(KEYS[2])
local cancels, stale_cancels = live_paths(KEYS[3])
if waits ~= ARGV[2] or cancels ~= ARGV[3] then return {'paths', waits, cancels} end
if #stale_waits > 0 then redis.call('HDEL', KEYS[2], unpack(stale_waits)) end
if #stale_cancels > 0 then redis.call('HDEL', KEYS[3], unpack(stale_cancels)) end

local lookback = tonumber(ARGV[1])
local r, w, c, n = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local a = 8
for i = 1, n do
  redis.call('ZADD', KEYS[1], now, ARGV[a])
  a = a + 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lookback)
redis.call('PEXPIRE', KEYS[1], lookback)
for j = 1, r do
  local key = KEYS[3 + j]
  local m = tonumber(ARGV[a])
  for i = 1, m do redis.call('ZADD', key, now, ARGV[a + i]) end
  a = a + m + 1
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - lookback)
  redis.call('PEXPIRE', key, lookback)
end
local wait_rows, cancel_rows = {}, {}
for j = 1, w do
  for _, v in ipairs(redis.call('HGETALL', KEYS[3 + r + j])) do wait_rows[#wait_rows + 1] = v end
end
for j = 1, c do
  for _, v in ipairs(redis.call('HGETALL', KEYS[3 + r + w + j])) do
    cancel_rows[#cancel_rows + 1] = v
  end
end
return {wait_rows, cancel_rows}
