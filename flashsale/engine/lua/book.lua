#!lua
-- book: give a shopper a booking number, once. Numbers are dense and follow arrival order:
-- the sale's "bookings" counter is the last number given.
--
-- KEYS[1]  sale hash   KEYS[2]  the shopper's booking bucket   KEYS[3]  events stream
-- ARGV[1]  the shopper's booking field (user digest)          ARGV[2]  user id
-- Returns  {"new", booking_no, now_ms} | {"exists", booking_no} | {"sale_not_found"}
--          {"booking_not_offered"} | {"booking_not_open", opens_ms}
--          {"booking_closed", closes_ms} | {"booking_full", capacity}
local no = redis.call('HGET', KEYS[2], ARGV[1])
if no then return {'exists', tonumber(no)} end
local s = redis.call('HMGET', KEYS[1], 'state', 'admission', 'bk_opens_ms', 'bk_closes_ms',
  'bk_capacity', 'bookings', 'ends_ms')
if not s[1] then return {'sale_not_found'} end
if not s[2] or s[2] == '' then return {'booking_not_offered'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local closes_ms = math.min(tonumber(s[4]), tonumber(s[7]))
if s[1] == 'closed' or now_ms >= closes_ms then return {'booking_closed', closes_ms} end
if now_ms < tonumber(s[3]) then return {'booking_not_open', tonumber(s[3])} end
local capacity = tonumber(s[5])
if capacity > 0 and tonumber(s[6]) >= capacity then return {'booking_full', capacity} end
no = redis.call('HINCRBY', KEYS[1], 'bookings', 1)
redis.call('HSET', KEYS[2], ARGV[1], no)
redis.call('XADD', KEYS[3], '*', 'kind', 'booking', 'user', ARGV[2], 'booking_no', no,
  'booked_ms', now_ms)
return {'new', no, now_ms}
