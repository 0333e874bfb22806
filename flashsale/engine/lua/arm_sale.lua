#!lua
-- arm_sale: put a sale's definition and counters into Redis, once.
--
-- KEYS[1]  sale hash
-- ARGV     field, value, field, value, ... (the definition; counters are set here)
--          ARGV[n] where the field is "stock" is also the starting "available"
-- Returns  1 when armed now, 0 when the sale was already armed (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local stock = nil
for i = 1, #ARGV, 2 do
  if ARGV[i] == 'stock' then stock = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('HSET', KEYS[1], 'available', stock, 'reserved', 0, 'paid', 0,
  'expired', 0, 'cancelled', 0)
return 1
