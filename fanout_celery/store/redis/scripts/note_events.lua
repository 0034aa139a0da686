-- Record events of one name as recently sent (for waits registered just after them) and
-- return who waits for that name: step waiters and cancel_on subscriptions.
-- KEYS: 1 recent zset of the name, 2 waits hash of the name, 3 cancels hash of the name
-- ARGV: 1 now_ms, 2 keep_after_ms (older entries are trimmed), 3 ttl_ms, 4.. event ids
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
