-- List runs under an event (prelude.lua: list_run), kept ttl ms from now.
-- KEYS: 1 the event's run list (keys.py: event_runs)
-- ARGV: 1 ttl ms, 2 '1' to list them in a set, else '', then the run ids
for i = 3, #ARGV do list_run(KEYS[1], ARGV[i], ARGV[1], ARGV[2]) end
return #ARGV - 2
