#!lua
-- set_state: pause, resume or close a sale. "closed" is final.
--
-- A pause stops the clock of a queue's admission windows (a booking queue's, or an opening
-- window's): shoppers admitted before the pause cannot buy during it, so on resume every
-- window still open at the pause gets the paused time back, and a wave admitted during the
-- pause (the opening one) starts now.
-- (admit.lua closes no window while the sale is paused.)
--
-- KEYS[1]  sale hash
-- KEYS[2]  admission waves zset
-- ARGV[1]  new state: "active", "paused" or "closed"
-- Returns  {"ok", previous_state} | {"sale_not_found"} | {"sale_ended"} (already closed)
local s = redis.call('HMGET', KEYS[1], 'state', 'paused_ms', 'admission', 'adm_window_s',
  'op_win_ms')
local state = s[1]
if not state then return {'sale_not_found'} end
if state == 'closed' and ARGV[1] ~= 'closed' then return {'sale_ended'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'paused' and state ~= 'paused' then
  redis.call('HSET', KEYS[1], 'paused_ms', now_ms)
elseif state == 'paused' and ARGV[1] ~= 'paused' then
  local paused_ms = tonumber(s[2])
  local opening = (tonumber(s[5] or '0') or 0) > 0  -- an opening window's queue
  if paused_ms and (s[3] == 'booking_order' or s[3] == 'lottery' or opening) then
    local window_ms = tonumber(s[4]) * 1000
    for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
      local first, ms = string.match(member, '^(%d+):(%d+)$')
      ms = tonumber(ms)
      local moved = ms
      if ms < now_ms and ms >= paused_ms then
        moved = now_ms
      elseif ms < paused_ms and ms + window_ms > paused_ms then
        moved = ms + (now_ms - paused_ms)
      end
      if moved ~= ms then
        redis.call('ZREM', KEYS[2], member)
        redis.call('ZADD', KEYS[2], tonumber(first), first .. ':' .. moved)
      end
    end
  end
  redis.call('HDEL', KEYS[1], 'paused_ms')
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return {'ok', state}
