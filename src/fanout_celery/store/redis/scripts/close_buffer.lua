-- A buffered run starts: close its buffer so later events open a new one.
-- KEYS: 1 buffer   ARGV: 1 run_id
if redis.call('HGET', KEYS[1], 'run') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
