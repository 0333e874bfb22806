#!lua
-- repair_deadlines: make the deadlines zset right for the given orders, from each order's
-- current state: a reserved order has its expiry there, any other order has none.
--
-- KEYS[1]      deadlines zset
-- KEYS[2..n]   order hashes, in the order of ARGV
-- ARGV         order ids
-- Returns      how many entries were added or removed
local changed = 0
for i, order_id in ipairs(ARGV) do
  local o = redis.call('HMGET', KEYS[i + 1], 'status', 'expires_ms')
  if o[1] == 'reserved' then
    changed = changed + redis.call('ZADD', KEYS[1], tonumber(o[2]), order_id)
  else
    changed = changed + redis.call('ZREM', KEYS[1], order_id)
  end
end
return changed
