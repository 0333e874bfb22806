#!lua
-- book: give a shopper a booking number, once. Numbers are dense and follow arrival order:
-- the sale's "bookings" counter is the last number given.
--
-- KEYS[1]  sale hash   KEYS[2]  the shopper's booking bucket   KEYS[3]  events stream
-- KEYS[4]  rate limit of this user          KEYS[5]  rate limit of this client address
-- ARGV[1]  the shopper's booking field (user digest)          ARGV[2]  user id
-- Returns  {"new", booking_no, now_ms} | {"exists", booking_no} | {"sale_not_found"}
--          {"booking_not_offered"} | {"booking_not_open", opens_ms}
--          {"booking_closed", closes_ms} | {"booking_full", capacity}
--          {"rate_limited", wait_us}

-- GCRA, as in buy.lua (scripts cannot share code)
local function gcra(key, rate, burst, now_us)
  rate, burst = tonumber(rate or '0') or 0, tonumber(burst or '0') or 0
  if rate <= 0 then return nil, nil end
  -- the bounds a sale is created with (0.01/s, a burst of 1e6), also for one armed before
  -- they existed: beyond them the arithmetic below leaves what Redis and doubles can hold
  rate, burst = math.min(math.max(rate, 0.01), 1000000), math.min(burst, 1000000)
  local interval = math.floor(1000000 / rate + 0.5)
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now_us)
  local allow_at = tat - math.max(burst - 1, 0) * interval
  if now_us < allow_at then return allow_at - now_us, nil end
  return nil, tat + interval
end

local function remember(key, tat, now_us)
  if tat then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now_us) / 1000) + 1)
  end
end

local s = redis.call('HMGET', KEYS[1], 'state', 'admission', 'bk_opens_ms', 'bk_closes_ms',
  'bk_capacity', 'bookings', 'ends_ms', 'rl_user_rate', 'rl_user_burst', 'rl_addr_rate',
  'rl_addr_burst')
if not s[1] then return {'sale_not_found'} end
if not s[2] or s[2] == '' then return {'booking_not_offered'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait_user, tat_user = gcra(KEYS[4], s[8], s[9], now_us)
local wait_addr, tat_addr = gcra(KEYS[5], s[10], s[11], now_us)
if wait_user or wait_addr then
  return {'rate_limited', math.max(wait_user or 0, wait_addr or 0)}
end
remember(KEYS[4], tat_user, now_us)
remember(KEYS[5], tat_addr, now_us)
local no = redis.call('HGET', KEYS[2], ARGV[1])
if no then return {'exists', tonumber(no)} end
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
