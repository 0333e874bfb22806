#!lua
-- admit: move a queued admission (booking_order, lottery, or an opening window's tickets)
-- forward. The sweeper runs it for every sale on each tick; several sweepers at once are
-- harmless (each run is atomic and works from what the previous one stored).
--
-- 0. Release the F-code lane once its moment (fc_lane) has passed, exactly once, whatever the
--    sale's state (buy.lua does the same when a buy meets the moment first): fcode_available
--    moves to available, counted in fcode_released, and a queue gets a place for each unit.
--    A release whose moment passed while the sweeper or Redis was away is made now.
--
-- An opening window's queue starts when the window closes (starts_ms + op_win_ms): its
-- tickets are counted for good then (op_n), and op_tickets is the queue's length.
-- Nothing moves while the sale is paused (set_state.lua gives the windows the time back).
--
-- 1. Close the windows that have ended, wave by wave in rank order (deadlines grow with rank,
--    so a cursor suffices): every admitted rank that holds no unit bought through the queue
--    frees its place; one BITCOUNT per wave counts the holders.
-- 2. Freed places (there, and "adm_freed": units released after a window closed) admit the
--    next ranks as one new wave, stamped now.
-- 3. Store the admission rate of the last minute and the next moment a place can free (the
--    next window close, or else the next reservation deadline), from which shoppers' waits
--    are estimated.
--
-- KEYS[1]  sale hash   KEYS[2]  admission waves zset   KEYS[3]  queue bits
-- KEYS[4]  reservation deadlines zset
-- Returns  {places freed, ranks admitted now, frontier (ranks admitted so far), F-code units
--          released now (-1: no release now)}
local s = redis.call('HMGET', KEYS[1], 'admission', 'state', 'starts_ms', 'ends_ms', 'bookings',
  'adm_slots', 'adm_cursor', 'adm_freed', 'adm_window_s', 'op_win_ms', 'op_tickets', 'op_n',
  'fc_lane', 'fcode_available')
if not s[2] then return {0, 0, 0, -1} end
local win = tonumber(s[10] or '0') or 0
local queued = s[1] == 'booking_order' or s[1] == 'lottery' or win > 0
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local released = -1
if s[13] and s[13] ~= 'closed' and now_ms >= tonumber(s[13]) then
  released = tonumber(s[14])
  redis.call('HSET', KEYS[1], 'fc_lane', 'closed', 'fcode_available', 0)
  redis.call('HINCRBY', KEYS[1], 'available', released)
  redis.call('HINCRBY', KEYS[1], 'fcode_released', released)
  if queued then
    redis.call('HINCRBY', KEYS[1], 'adm_freed', released)
    s[8] = tostring(tonumber(s[8]) + released)
  end
end
if not queued then return {0, 0, 0, released} end
local opens_ms, n = tonumber(s[3]), tonumber(s[5])
if win > 0 then
  opens_ms, n = opens_ms + win, tonumber(s[11])
end
local slots, cursor = tonumber(s[6]), tonumber(s[7])
local frontier = math.min(slots, n)
if now_ms < opens_ms or now_ms >= tonumber(s[4]) or s[2] ~= 'active' then
  return {0, 0, frontier, released}
end
if win > 0 and not s[12] then  -- the window's tickets are counted for good
  redis.call('HSET', KEYS[1], 'op_n', n)
end
local window_ms = tonumber(s[9]) * 1000

local function wave_at(rank)  -- {first rank, admitted_ms} of the wave holding rank
  local w = redis.call('ZREVRANGEBYSCORE', KEYS[2], rank, '-inf', 'LIMIT', 0, 1)[1]
  local first, ms = string.match(w, '^(%d+):(%d+)$')
  return tonumber(first), tonumber(ms)
end

local freed = tonumber(s[8])
for _ = 1, 1000 do
  if cursor > frontier then break end
  local _, admitted_ms = wave_at(cursor)
  if admitted_ms + window_ms > now_ms then break end
  local last = frontier
  local after = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. cursor, '+inf', 'LIMIT', 0, 1)[1]
  if after then last = math.min(last, tonumber(string.match(after, '^(%d+):')) - 1) end
  local holding = redis.call('BITCOUNT', KEYS[3], cursor, last, 'BIT')
  freed = freed + (last - cursor + 1) - holding
  cursor = last + 1
end

local admitted = 0
slots = slots + freed
local new_frontier = math.min(slots, n)
if new_frontier > frontier then
  redis.call('ZADD', KEYS[2], frontier + 1, (frontier + 1) .. ':' .. now_ms)
  admitted = new_frontier - frontier
end

-- ranks admitted in the last minute by later waves (the opening wave is not a rate)
local since_ms = now_ms - 60000
local recent = redis.call('ZREVRANGEBYSCORE', KEYS[2], '+inf', '(1', 'LIMIT', 0, 1000)
local upper, count = new_frontier + 1, 0
for _, member in ipairs(recent) do
  local first, ms = string.match(member, '^(%d+):(%d+)$')
  if tonumber(ms) < since_ms then break end
  count = count + upper - tonumber(first)
  upper = tonumber(first)
end
local span_ms = math.min(60000, now_ms - opens_ms)
local rate = (span_ms > 0) and (count * 1000 / span_ms) or 0
local next_ms = 0
if cursor <= new_frontier then
  local _, admitted_ms = wave_at(cursor)
  next_ms = admitted_ms + window_ms
else
  local due = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if due[2] then next_ms = tonumber(due[2]) end
end
redis.call('HSET', KEYS[1], 'adm_slots', slots, 'adm_cursor', cursor, 'adm_freed', 0,
  'adm_rate', string.format('%.3f', rate), 'adm_next_ms', next_ms)
return {freed, admitted, new_frontier, released}
