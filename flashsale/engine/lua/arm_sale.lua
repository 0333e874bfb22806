#!lua
-- arm_sale: put a sale's definition and counters into Redis, once.
--
-- KEYS[1]  sale hash
-- ARGV     field, value, field, value, ... : the definition and the starting "available"
--          (public units) and "fcode_available" (units set aside for F-code holders)
-- Returns  1 when armed now, 0 when the sale was already armed (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('HSET', KEYS[1], 'reserved', 0, 'paid', 0, 'expired', 0, 'cancelled', 0,
  'fcode_failures', 0)
return 1
