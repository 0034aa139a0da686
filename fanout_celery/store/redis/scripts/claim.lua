-- Claim what is due in one index: move each due member's score to the re-dispatch
-- deadline (so a pump that dies before publishing is covered) and return them.
-- KEYS: 1 zset   ARGV: 1 now_ms, 2 redispatch_deadline_ms, 3 limit
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
