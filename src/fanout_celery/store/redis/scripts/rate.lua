-- Rate limit on run creation: a sliding log of the last `limit` starts per key.
-- KEYS: 1 the log (zset)   ARGV: 1 now_ms, 2 period_ms, 3 limit, 4 member
-- Returns 1 when the run may be created, 0 when it is skipped.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
