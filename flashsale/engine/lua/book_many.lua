#!lua
-- book_many: import a batch of a channel partner's booking list. Each shopper not yet booked
-- gets the next number, in list order; a shopper already booked keeps their number, so an
-- import can be repeated. The booking window does not apply (partners took the bookings), but
-- the capacity does, and a queued admission's order is fixed once the sale starts.
-- Nothing goes to the events stream: the importer writes these rows to PostgreSQL itself.
--
-- KEYS[1]        sale hash
-- KEYS[2..n+1]   the booking bucket of each shopper, in ARGV order
-- ARGV[1..n]     the booking field (user digest) of each shopper
-- Returns  {"ok", new, no_1, ..., no_n}: every shopper's number, 0 for those refused because
--          the capacity was reached (then the word is "booking_full")
--          | {"sale_not_found"} | {"booking_not_offered"} | {"booking_closed", closes_ms}
local s = redis.call('HMGET', KEYS[1], 'state', 'admission', 'starts_ms', 'ends_ms',
  'bk_capacity', 'bookings')
if not s[1] then return {'sale_not_found'} end
if not s[2] or s[2] == '' then return {'booking_not_offered'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local closes_ms = tonumber(s[4])
if s[2] ~= 'arrival' then closes_ms = tonumber(s[3]) end
if s[1] == 'closed' or now_ms >= closes_ms then return {'booking_closed', closes_ms} end
local capacity, n = tonumber(s[5]), tonumber(s[6])
local result = {'ok', 0}  -- the numbers follow from result[3] on
for i, field in ipairs(ARGV) do
  local no = redis.call('HGET', KEYS[i + 1], field)
  if no then
    result[i + 2] = tonumber(no)
  elseif capacity > 0 and n >= capacity then
    result[1], result[i + 2] = 'booking_full', 0
  else
    n = n + 1
    result[2] = result[2] + 1
    redis.call('HSET', KEYS[i + 1], field, n)
    result[i + 2] = n
  end
end
if result[2] > 0 then redis.call('HSET', KEYS[1], 'bookings', n) end
return result
