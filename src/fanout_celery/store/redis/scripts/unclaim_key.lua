-- Release a claimed key if this run still holds it.
-- KEYS: 1 claim key   ARGV: 1 run_id
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
end
return 1
