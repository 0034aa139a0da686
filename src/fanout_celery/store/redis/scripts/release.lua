-- Free a run's slots (run_id '' frees none: a reconcile pass) and wake as many waiting runs
-- as there is room for; returns their ids, which the caller enqueues. Each woken run gets
-- its slot reserved until ARGV[4] (its gate then takes it): without the reservation, a
-- second release or a reconcile before the woken run's gate would see the slot free and
-- wake another run too, out of priority order. Its timer is due at the redispatch deadline,
-- in case the caller dies before enqueueing it.
-- KEYS: 1 timers, 2 registry, then (slots, queue) per limit
-- ARGV: 1 run_id, 2 now_ms, 3 redispatch deadline ms, 4 reservation expiry ms, then one
--       limit per slots key
local now = tonumber(ARGV[2])
local out = {}
local n = #ARGV - 4
for i = 1, n do
  local slots, queue = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  if ARGV[1] ~= '' then redis.call('ZREM', slots, ARGV[1]) end
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local room = tonumber(ARGV[4 + i]) - redis.call('ZCARD', slots)
  if room > 0 then
    local popped = redis.call('ZPOPMIN', queue, room)
    for j = 1, #popped, 2 do
      redis.call('ZADD', slots, ARGV[4], popped[j])
      redis.call('ZADD', KEYS[1], ARGV[3], popped[j])
      out[#out + 1] = popped[j]
    end
  end
  if redis.call('ZCARD', queue) == 0 then redis.call('HDEL', KEYS[2], queue) end
end
return out
