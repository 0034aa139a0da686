-- Record a run that flow control skipped (rate limit, singleton, idempotency), unless the
-- run exists: a re-sent event whose run was created before must leave that run as it is.
-- KEYS: 1 run, 2 function_runs, 3 event_runs, 4 done
-- ARGV: 1 run_id, 2 now_ms, 3 retention_ms, 4 error json, 5 list as a set ('1' or ''),
--       then the run's static fields
--       (name, value, ...: store/redis/base.py, static_fields)
-- Returns 1 when recorded, 0 when the run already existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'skipped', 'created_at', ARGV[2], 'ended_at', ARGV[2],
           'attempt', '0', 'error', ARGV[4], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
list_run(KEYS[3], ARGV[1], ARGV[3], ARGV[5])
notify_done(KEYS[4], 'skipped')
return 1
