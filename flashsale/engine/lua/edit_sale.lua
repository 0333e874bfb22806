#!lua
-- edit_sale: give a sale that has not opened yet a new definition, in one step, so that a buy
-- or a booking sees either the old sale or the new one, never a mix.
--
-- A sale may change only while nothing can have been sold or booked online: before it opens
-- (starts_ms, or the opening window's start op_win_ms before it), before its F-code lane opens
-- (fcode_opens_ms) and, for a sale that takes bookings, before booking opens (bk_opens_ms),
-- all by Redis's clock. Bookings imported
-- ahead of that are the only thing that may exist: a change that would strand them is refused.
--
-- KEYS[1]  sale hash
-- KEYS[2]  admission waves zset
-- ARGV[1]  the opening wave of the new definition: "1:<starts_ms>" when queued, else ""
-- ARGV[2]  "1": the change needs a sale without bookings (booking dropped, admission or
--          lottery seed changed), "0" otherwise
-- ARGV[3]  the new booking capacity (0: no limit)
-- ARGV[4]  n, the number of field names that follow, to delete (the old booking policy's)
-- ARGV[5 .. 4+n]  those field names
-- ARGV[5+n ..]    field, value, field, value, ...: the new definition and starting counters
-- Returns  {"ok"} | {"sale_not_found"} | {"sale_ended"} (closed)
--          {"opened", lane, at_ms}    lane "sale", "queue", "fcode" or "booking" opened at at_ms
--          {"orders_exist", units}    units reserved, paid, expired or cancelled
--          {"bookings_exist", n}      | {"above_capacity", n}
local s = redis.call('HMGET', KEYS[1], 'state', 'starts_ms', 'fcode_opens_ms', 'admission',
  'bk_opens_ms', 'reserved', 'paid', 'expired', 'cancelled', 'bookings', 'op_win_ms')
if not s[1] then return {'sale_not_found'} end
if s[1] == 'closed' then return {'sale_ended'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local starts_ms = tonumber(s[2])
-- an opening window gives tickets from op_win_ms before the start
local queue_ms = starts_ms - (tonumber(s[11] or '') or 0)
if now_ms >= queue_ms and queue_ms < starts_ms then return {'opened', 'queue', queue_ms} end
if now_ms >= starts_ms then return {'opened', 'sale', starts_ms} end
local fcode_opens_ms = tonumber(s[3] or '') or starts_ms
if now_ms >= fcode_opens_ms then return {'opened', 'fcode', fcode_opens_ms} end
if s[4] and s[4] ~= '' and now_ms >= tonumber(s[5]) then
  return {'opened', 'booking', tonumber(s[5])}
end
local units = 0
for i = 6, 9 do units = units + (tonumber(s[i] or '0') or 0) end
if units > 0 then return {'orders_exist', units} end
local bookings = tonumber(s[10] or '0') or 0
if ARGV[2] == '1' and bookings > 0 then return {'bookings_exist', bookings} end
local capacity = tonumber(ARGV[3])
if capacity > 0 and bookings > capacity then return {'above_capacity', bookings} end

local n = tonumber(ARGV[4])
if n > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 5, 4 + n)) end
redis.call('HSET', KEYS[1], unpack(ARGV, 5 + n))
redis.call('DEL', KEYS[2])
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[2], 1, ARGV[1]) end
return {'ok'}
