-- Claim what is due in one index: move each due member's score to the re-dispatch
-- deadline (so a pump that dies before publishing is covered) and return them with
-- the times they were due, earliest first.
-- KEYS: 1 zset   ARGV: 1 now_ms, 2 redispatch_deadline_ms, 3 limit
-- Returns: {member, due_ms, member, due_ms, ...}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], ARGV[2], due[i]) end
return due
