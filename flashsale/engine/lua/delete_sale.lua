#!lua
-- delete_sale: remove a sale that never opened and holds nothing: no order, booking, F-code
-- or dead letter. Checked and done in one step, so no buy or booking can slip in between.
-- Every key is the sale's own (one hash tag): the caller then takes the sale out of the index
-- of armed sales.
--
-- KEYS[1]  sale hash          KEYS[2]  holders hash             KEYS[3]  deadlines zset
-- KEYS[4]  events stream      KEYS[5]  dead letters stream      KEYS[6]  F-codes hash
-- KEYS[7]  admission waves    KEYS[8]  queue holders hash       KEYS[9]  queue bits
-- KEYS[10] the status the log last told (engine/reporter.py)
-- Returns  {"ok"} | {"sale_not_found"} | {"opened", lane, at_ms} | {"orders_exist", units}
--          {"bookings_exist", n} | {"fcodes_exist", n} | {"dead_letters_exist", n}
local s = redis.call('HMGET', KEYS[1], 'starts_ms', 'fcode_opens_ms', 'reserved', 'paid',
  'expired', 'cancelled', 'bookings', 'op_win_ms')
if not s[1] then return {'sale_not_found'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local starts_ms = tonumber(s[1])
-- an opening window gives tickets from op_win_ms before the start
local queue_ms = starts_ms - (tonumber(s[8] or '') or 0)
if now_ms >= queue_ms and queue_ms < starts_ms then return {'opened', 'queue', queue_ms} end
if now_ms >= starts_ms then return {'opened', 'sale', starts_ms} end
local fcode_opens_ms = tonumber(s[2] or '') or starts_ms
if now_ms >= fcode_opens_ms then return {'opened', 'fcode', fcode_opens_ms} end
local units = 0
for i = 3, 6 do units = units + (tonumber(s[i] or '0') or 0) end
if units > 0 then return {'orders_exist', units} end
local bookings = tonumber(s[7] or '0') or 0
if bookings > 0 then return {'bookings_exist', bookings} end
local codes = redis.call('HLEN', KEYS[6])
if codes > 0 then return {'fcodes_exist', codes} end
local letters = redis.call('XLEN', KEYS[5])
if letters > 0 then return {'dead_letters_exist', letters} end
redis.call('DEL', unpack(KEYS))
return {'ok'}
