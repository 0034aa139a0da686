-- Claim a key for a run once per window (idempotency) or while it is active (singleton).
-- KEYS: 1 claim key   ARGV: 1 run_id, 2 now_ms, 3 window ms ('' = until released)
-- Returns '' when claimed, else 'run_id|claimed_at_ms' of the run holding it.
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, '|', 1, true)
  local at = tonumber(string.sub(held, sep + 1))
  if ARGV[3] == '' or tonumber(ARGV[2]) - at < tonumber(ARGV[3]) then return held end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2])
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2) end
return ''
