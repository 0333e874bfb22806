#!lua
-- cancel: a shopper cancels their reserved order; its units return to the sale at once.
-- Past its deadline the order is expired instead (what already happened to it; the sweeper had
-- not seen it). Payment is not a shopper's to make: pay.lua decides the payment service's
-- notifications.
-- Repeating a cancel answers like the first time. Units return exactly once, to the lane they
-- came from (an F-code unit to the public lane once the F-code lane has been released): only
-- the step out of "reserved" moves counters. An F-code whose order is released
-- becomes usable again (unless it was revoked meanwhile). A shopper who bought through the
-- booking queue and so lets go of their last unit after their admission window closed hands
-- their place to the next in line (adm_freed; admit.lua admits them).
--
-- KEYS[1]  sale hash        KEYS[4]  events stream    KEYS[7]  queue holders hash
-- KEYS[2]  holders hash     KEYS[5]  order hash       KEYS[8]  queue bits
-- KEYS[3]  deadlines zset   KEYS[6]  F-codes hash
-- ARGV[1]  order id   ARGV[2]  user id of the caller
-- Returns  {word, status, qty, created_ms, expires_ms, updated_ms, campaign}; word is "ok",
--          "order_not_found", "order_expired" or "order_paid"
local order_id, caller = ARGV[1], ARGV[2]
-- The lane a unit goes back to: its own; but once the F-code lane has been released to the
-- public (fc_lane "closed"), an F-code unit goes to the public lane, counted in
-- fcode_released, and a queue gets one more place for it (admit.lua opens it).
local function lane_of(fcode, qty)
  if fcode == '' then return 'available' end
  local l = redis.call('HMGET', KEYS[1], 'fc_lane', 'admission', 'op_win_ms')
  if l[1] ~= 'closed' then return 'fcode_available' end
  redis.call('HINCRBY', KEYS[1], 'fcode_released', qty)
  if l[2] == 'booking_order' or l[2] == 'lottery' or (tonumber(l[3] or '0') or 0) > 0 then
    redis.call('HINCRBY', KEYS[1], 'adm_freed', qty)
  end
  return 'available'
end
local o = redis.call('HMGET', KEYS[5], 'user', 'qty', 'status', 'created_ms', 'expires_ms',
  'updated_ms', 'v', 'fcode', 'campaign', 'rank')
if not o[1] or o[1] ~= caller then return {'order_not_found'} end
local qty, status, expires_ms = tonumber(o[2]), o[3], tonumber(o[5])
local fcode, campaign = o[8] or '', o[9] or ''
local function answer(st, updated)
  local word = (st == 'cancelled') and 'ok' or ('order_' .. st)
  return {word, st, qty, tonumber(o[4]), expires_ms, updated, campaign}
end
if status ~= 'reserved' then return answer(status, tonumber(o[6])) end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local new_status = 'cancelled'
if now_ms >= expires_ms then new_status = 'expired' end
redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
redis.call('HINCRBY', KEYS[1], new_status, qty)
redis.call('HINCRBY', KEYS[1], lane_of(fcode, qty), qty)
redis.call('HINCRBY', KEYS[2], o[1], -qty)
if fcode ~= '' then
  local record = redis.call('HGET', KEYS[6], fcode)
  local state, camp, oid, bound = string.match(record or '', '^(%a)|([^|]*)|([^|]*)|(.*)$')
  if state == 'u' and oid == order_id then
    redis.call('HSET', KEYS[6], fcode, table.concat({'a', camp, '', bound}, '|'))
  end
end
local rank = tonumber(o[10])
if rank and redis.call('HINCRBY', KEYS[7], o[1], -qty) <= 0 then
  redis.call('HDEL', KEYS[7], o[1])
  redis.call('SETBIT', KEYS[8], rank, 0)
  if rank < tonumber(redis.call('HGET', KEYS[1], 'adm_cursor')) then
    redis.call('HINCRBY', KEYS[1], 'adm_freed', 1)
  end
end
local v = tonumber(o[7]) + 1
redis.call('ZREM', KEYS[3], order_id)
redis.call('HSET', KEYS[5], 'status', new_status, 'updated_ms', now_ms, 'v', v)
redis.call('XADD', KEYS[4], '*', 'order_id', order_id, 'user', o[1], 'qty', qty,
  'status', new_status, 'v', v, 'created_ms', o[4], 'updated_ms', now_ms,
  'expires_ms', expires_ms, 'fcode', fcode, 'campaign', campaign)
return answer(new_status, now_ms)
