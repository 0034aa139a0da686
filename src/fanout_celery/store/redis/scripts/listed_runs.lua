-- The runs listed under an event (prelude.lua: list_run), in either layout.
-- KEYS: 1 the event's run list (keys.py: event_runs)
if redis.call('TYPE', KEYS[1]).ok == 'set' then return redis.call('SMEMBERS', KEYS[1]) end
return redis.call('HKEYS', KEYS[1])
