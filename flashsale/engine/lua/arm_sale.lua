#!lua
-- arm_sale: put a sale's definition and counters into Redis, once.
--
-- KEYS[1]  sale hash
-- KEYS[2]  admission waves zset (used only by sales that admit booked shoppers in a queue)
-- ARGV[1]  the opening wave: "1:<starts_ms>" for a queued admission, "" otherwise
-- ARGV[2..] field, value, field, value, ... : the definition and the starting "available"
--          (public units) and "fcode_available" (units set aside for F-code holders)
-- Returns  1 when armed now, 0 when the sale was already armed (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HSET', KEYS[1], 'reserved', 0, 'paid', 0, 'expired', 0, 'cancelled', 0,
  'fcode_failures', 0, 'bookings', 0)
if ARGV[1] ~= '' then
  -- the first ranks are admitted at the start; later waves are added by admit.lua
  redis.call('DEL', KEYS[2])
  redis.call('ZADD', KEYS[2], 1, ARGV[1])
end
return 1
