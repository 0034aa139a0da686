--! include waiter
-- On a Redis Cluster: register a wait_for_event waiter, atomically with reading the
-- events of that name noted since the run was created (see waiter.lua). On one Redis
-- park_waiting.lua does this and parks the run in the same script; on a cluster the run
-- lives in another slot, and the store parks it next (see RedisStore.park_waiting).
-- KEYS: 1 wait bucket hash, 2 waitpaths hash, 3 recent zset of the name, 4 recent zset of
--       the waiter's bucket (or any key of this slot)
-- ARGV: 1 waits field, 2 waiter_json, 3 since (ms, the run's creation), 4 match path
--       ('' = none), 5 path expiry ms, 6 events to read for a waiter without a match path
-- Returns the event ids noted since.
return register_waiter(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2],
                       tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6])
