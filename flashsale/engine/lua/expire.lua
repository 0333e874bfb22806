#!lua
-- expire: return the units of reservations whose deadline has passed, exactly once, each to
-- the lane it came from (an F-code unit to the public lane once the F-code lane has been
-- released); an F-code whose order expired becomes usable again (unless revoked).
-- The sweeper picks candidates from the deadlines zset; this script re-checks each one
-- against Redis's own clock, so a stale or early candidate changes nothing. A shopper who
-- bought through the booking queue and whose admission window has closed hands their place to
-- the next in line when their last unit expires (adm_freed; admit.lua admits them).
--
-- KEYS[1]  sale hash        KEYS[4]  F-codes hash         KEYS[7..n-1] order hashes
-- KEYS[2]  holders hash     KEYS[5]  queue holders hash   KEYS[n]      events stream
-- KEYS[3]  deadlines zset   KEYS[6]  queue bits
-- ARGV     candidate order ids, in the order of KEYS[7..n-1]
-- Returns  number of reservations expired now
local events = KEYS[#KEYS]
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
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = 0
for i, order_id in ipairs(ARGV) do
  local key = KEYS[6 + i]
  local o = redis.call('HMGET', key, 'user', 'qty', 'status', 'created_ms', 'expires_ms', 'v',
    'fcode', 'campaign', 'rank')
  if o[3] ~= 'reserved' then
    -- paid or settled already (or unknown): the deadline entry is stale
    redis.call('ZREM', KEYS[3], order_id)
  elseif tonumber(o[5]) <= now_ms then
    local qty, v, fcode = tonumber(o[2]), tonumber(o[6]) + 1, o[7] or ''
    redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
    redis.call('HINCRBY', KEYS[1], lane_of(fcode, qty), qty)
    redis.call('HINCRBY', KEYS[1], 'expired', qty)
    redis.call('HINCRBY', KEYS[2], o[1], -qty)
    if fcode ~= '' then
      local record = redis.call('HGET', KEYS[4], fcode)
      local state, camp, oid, bound = string.match(record or '', '^(%a)|([^|]*)|([^|]*)|(.*)$')
      if state == 'u' and oid == order_id then
        redis.call('HSET', KEYS[4], fcode, table.concat({'a', camp, '', bound}, '|'))
      end
    end
    local rank = tonumber(o[9])
    if rank and redis.call('HINCRBY', KEYS[5], o[1], -qty) <= 0 then
      redis.call('HDEL', KEYS[5], o[1])
      redis.call('SETBIT', KEYS[6], rank, 0)
      if rank < tonumber(redis.call('HGET', KEYS[1], 'adm_cursor')) then
        redis.call('HINCRBY', KEYS[1], 'adm_freed', 1)
      end
    end
    redis.call('ZREM', KEYS[3], order_id)
    redis.call('HSET', key, 'status', 'expired', 'updated_ms', now_ms, 'v', v)
    redis.call('XADD', events, '*', 'order_id', order_id, 'user', o[1], 'qty', qty,
      'status', 'expired', 'v', v, 'created_ms', o[4], 'updated_ms', now_ms,
      'expires_ms', o[5], 'fcode', fcode, 'campaign', o[8] or '')
    expired = expired + 1
  end
end
return expired
