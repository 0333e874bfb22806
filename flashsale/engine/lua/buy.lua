#!lua
-- buy: decide one purchase atomically: sale open, F-code, per-user limit, stock, idempotency,
-- the reservation with its deadline, and the order event for the PostgreSQL writer.
-- Every check runs before the first write, so a refusal changes nothing (except that a guessed
-- F-code is counted, which is the point of counting).
--
-- Two lanes share the script. Public buyers draw from "available" from starts_ms on. F-code
-- buyers draw from "fcode_available" from fcode_opens_ms on, and consume their code. The lanes
-- never borrow from each other.
--
-- A sale with booking gates the public lane (F-code holders skip the queue): with
-- "booking_required" only booked shoppers may buy. With a queued admission (booking_order,
-- lottery) a booked shopper buys only once admitted (queue rank within the frontier
-- min(adm_slots, bookings)) and before the admission window closes; anyone else is told their
-- place. Unbooked shoppers, when booking is optional, queue behind every booked one.
--
-- A sale with an opening window (op_win_ms, W; arrival admission only) answers the public
-- buy requests from starts_ms - W until starts_ms + W with a ticket (one per shopper, kept in
-- the ticket bucket) and reserves nothing. When the window closes its tickets are ranked by
-- the seeded permutation draw_rank (flashsale/opening/shuffle.py) and admitted in that order
-- as a booking queue's ranks are (frontier min(adm_slots, op_tickets), a window each); a
-- shopper without a ticket after that gets the next number, ranked in arrival order, and is
-- admitted at once when a place is free. A sale without a window pays one more field read.
--
-- A sale with fcode_release_ms has "fc_lane" = that moment until the F-code units nobody
-- redeemed pass to the public lane, and "closed" after. The first buy that meets the moment
-- makes the release itself (admit.lua does it for the sweeper), exactly once; F-code buys are
-- refused from then on.
--
-- KEYS[1]  sale hash               KEYS[6]  idempotency string (unused when ARGV[4] is "")
-- KEYS[2]  holders hash            KEYS[7]  F-codes hash (digest -> state|campaign|order|user)
-- KEYS[3]  deadlines zset          KEYS[8]  F-code guesses of this user (counter)
-- KEYS[4]  events stream           KEYS[9]  F-code guesses from this address (counter)
-- KEYS[5]  order hash (of ARGV[3])  KEYS[10] the buyer's booking bucket
-- KEYS[11] admission waves zset    KEYS[12] queue holders hash    KEYS[13] queue bits
-- KEYS[14] rate limit of this user KEYS[15] rate limit of this client address
-- KEYS[16] the buyer's opening ticket bucket     KEYS[17] the opening's ticket roll
-- ARGV[1]  user id                 ARGV[6]  F-code digest, "" for a public buy
-- ARGV[2]  quantity                ARGV[7]  guesses allowed per user per window (0: off)
-- ARGV[3]  new order id            ARGV[8]  guesses allowed per address per window (0: off)
-- ARGV[4]  request fingerprint     ARGV[9]  guess window (s)
-- ARGV[5]  idempotency ttl (s)     ARGV[10] the buyer's booking field (user digest)
-- Returns  {"ok", order_id, qty, created_ms, expires_ms, campaign}      reserved now
--          {"replay", order_id, qty, created_ms, expires_ms, campaign}  the first answer, as
--                                        reserved (the caller reads the order as it is now)
--          {"idempotency_key_reused"} | {"sale_not_found"} | {"sale_ended"}
--          {"sale_not_open"} (not started) | {"sale_paused"} | {"quantity_above_limit", limit}
--          {"limit_reached", held, limit} | {"sold_out", available}
--          {"fcode_throttled", retry_after_ms} | {"fcode_invalid"} | {"fcode_used"}
--          {"fcode_revoked"} | {"booking_required"} | {"admission_passed"}
--          {"rate_limited", wait_us}          more requests than the sale allows (GCRA)
--          {"queued", ahead, booking_no or "", admission rate (/s), next window close (ms),
--           now_ms}                                                  nothing reserved
--          {"ticketed", ticket, ahead (-1 before the draw), admission rate (/s), the next
--           moment a place can free (ms), now_ms, draw_ms}           nothing reserved
--          {"fcode_lane_closed"}                F-code units passed to the public lane
local user, qty, order_id, fingerprint = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local fcode = ARGV[6]

-- The queue rank of booking number no among n bookings in a lottery sale: the Feistel
-- permutation with cycle walking of flashsale/booking/lottery.py, which documents it.
local function draw_rank(no, n, keys_csv)
  local TWO32 = 4294967296
  local keys = {}
  for k in string.gmatch(keys_csv, '%d+') do keys[#keys + 1] = tonumber(k) end
  local bits = 0
  while 2 ^ bits < n do bits = bits + 1 end
  local m = 2 ^ math.max(1, math.ceil(bits / 2))
  local function mul32(a, b)  -- a * b mod 2^32, exact in doubles
    local lo, hi = a % 65536, math.floor(a / 65536)
    return (lo * b + (hi * b % 65536) * 65536) % TWO32
  end
  local function mix(x)  -- lowbias32
    x = bit.bxor(x, bit.rshift(x, 16)) % TWO32
    x = mul32(x, 0x7feb352d)
    x = bit.bxor(x, bit.rshift(x, 15)) % TWO32
    x = mul32(x, 0x846ca68b)
    return bit.bxor(x, bit.rshift(x, 16)) % TWO32
  end
  local x = no - 1
  repeat
    local l, r = math.floor(x / m), x % m
    for i = 1, #keys do
      l, r = r, (l + mix(bit.bxor(r, keys[i]) % TWO32) % m) % m
    end
    x = l * m + r
  until x < n
  return x + 1
end

-- GCRA (the same in book.lua: scripts cannot share code). Returns the wait in microseconds when
-- a request must be refused, else nil and the arrival time to store.
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

-- The client library may resend a request whose reply it lost: the order id makes that a replay.
local mine = redis.call('HMGET', KEYS[5], 'qty', 'created_ms', 'expires_ms', 'campaign')
if mine[1] then
  return {'replay', order_id, tonumber(mine[1]), tonumber(mine[2]), tonumber(mine[3]),
    mine[4] or ''}
end
if fingerprint ~= '' then
  local first = redis.call('GET', KEYS[6])
  if first then
    local fp, oid, q, created, expires, campaign =
      string.match(first, '^([^|]*)|([^|]*)|(%d+)|(%d+)|(%d+)|(.*)$')
    if fp ~= fingerprint then return {'idempotency_key_reused'} end
    return {'replay', oid, tonumber(q), tonumber(created), tonumber(expires), campaign}
  end
end

local sale = redis.call('HMGET', KEYS[1], 'state', 'starts_ms', 'ends_ms', 'available',
  'per_user_limit', 'ttl_s', 'fcode_available', 'fcode_opens_ms', 'admission', 'bk_required',
  'reserved', 'rl_user_rate', 'rl_user_burst', 'rl_addr_rate', 'rl_addr_burst', 'op_win_ms',
  'fc_lane')
if not sale[1] then return {'sale_not_found'} end
local win = tonumber(sale[16] or '0') or 0  -- the opening window (ms), 0 without one
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- the only writes before the checks: a request counts against the limits whatever its answer
local wait_user, tat_user = gcra(KEYS[14], sale[12], sale[13], now_us)
local wait_addr, tat_addr = gcra(KEYS[15], sale[14], sale[15], now_us)
if wait_user or wait_addr then
  return {'rate_limited', math.max(wait_user or 0, wait_addr or 0)}
end
remember(KEYS[14], tat_user, now_us)
remember(KEYS[15], tat_addr, now_us)
-- The F-code lane's release, when this buy is the first to meet its moment: the units no code
-- holder took pass to the public lane, and a queue gets one more place for each (admit.lua
-- opens them). Like the rate limits, written whatever the answer.
local lane = sale[17]
if lane and lane ~= 'closed' and now_ms >= tonumber(lane) then
  local moved = tonumber(sale[7])
  redis.call('HSET', KEYS[1], 'fc_lane', 'closed', 'fcode_available', 0)
  redis.call('HINCRBY', KEYS[1], 'available', moved)
  redis.call('HINCRBY', KEYS[1], 'fcode_released', moved)
  if sale[9] == 'booking_order' or sale[9] == 'lottery' or win > 0 then
    redis.call('HINCRBY', KEYS[1], 'adm_freed', moved)
  end
  sale[4], sale[7], lane = tostring(tonumber(sale[4]) + moved), '0', 'closed'
end
-- nothing left and nothing that could come back (no reservation that may be released, no
-- F-code units still to pass to the public): waiting would be a false hope
local function exhausted()
  return tonumber(sale[4]) <= 0 and tonumber(sale[11]) <= 0
    and not (lane and lane ~= 'closed' and tonumber(sale[7]) > 0)
end
if sale[1] == 'closed' or now_ms >= tonumber(sale[3]) then return {'sale_ended'} end
local opens_ms, pool = tonumber(sale[2]) - win, 'available'  -- tickets from starts_ms - W
if fcode ~= '' then opens_ms, pool = tonumber(sale[8]), 'fcode_available' end
if now_ms < opens_ms then return {'sale_not_open'} end
if sale[1] == 'paused' then return {'sale_paused'} end
if fcode ~= '' and lane == 'closed' then return {'fcode_lane_closed'} end

local rank = nil  -- queue rank of a booked buyer in a queued admission
local admission = sale[9] or ''
if fcode == '' and admission ~= '' then
  local booking_no = redis.call('HGET', KEYS[10], ARGV[10])
  if not booking_no and sale[10] == '1' then return {'booking_required'} end
  if admission ~= 'arrival' then
    local q = redis.call('HMGET', KEYS[1], 'bookings', 'adm_slots', 'adm_cursor',
      'adm_window_s', 'adm_rate', 'adm_next_ms', 'lottery_keys')
    local n, slots = tonumber(q[1]), tonumber(q[2])
    local frontier = math.min(slots, n)
    local function queued(ahead)
      if exhausted() then return {'sold_out', 0} end
      return {'queued', ahead, booking_no or '', q[5] or '0', q[6] or '0', now_ms}
    end
    if not booking_no then
      if slots < n then return queued(n - frontier) end
    else
      rank = tonumber(booking_no)
      if admission == 'lottery' then rank = draw_rank(rank, n, q[7]) end
      if rank > frontier then return queued(rank - frontier - 1) end
      local closed = rank < tonumber(q[3])
      if not closed then
        local wave = redis.call('ZREVRANGEBYSCORE', KEYS[11], rank, '-inf', 'LIMIT', 0, 1)
        closed = now_ms >= tonumber(string.match(wave[1], ':(%d+)$')) + tonumber(q[4]) * 1000
      end
      -- once the whole queue has been admitted nobody is waiting for these units: every
      -- booked shopper may buy what is left, first come first served
      if closed and slots < n then return {'admission_passed'} end
    end
  end
end

if fcode == '' and win > 0 then
  -- the opening window: a ticket per shopper; after the draw, admission in the tickets' order
  local draw_ms = tonumber(sale[2]) + win
  local q = redis.call('HMGET', KEYS[1], 'op_tickets', 'op_n', 'op_keys', 'adm_slots',
    'adm_cursor', 'adm_window_s', 'adm_rate', 'adm_next_ms')
  local n, drawn, slots = tonumber(q[1]), tonumber(q[2] or ''), tonumber(q[4])
  local ticket = tonumber(redis.call('HGET', KEYS[16], ARGV[10]) or '')
  local function ticketed(ahead, next_ms)
    return {'ticketed', ticket, ahead, q[7] or '0', next_ms, now_ms, draw_ms}
  end
  -- a ticket for a shopper who has none (one per user id, however many requests or
  -- devices); nil, or the refusal when a ticket would be of no use
  local function new_ticket()
    local limit = tonumber(sale[5])
    if qty > limit then return {'quantity_above_limit', limit} end
    local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
    if held + qty > limit then return {'limit_reached', held, limit} end
    if exhausted() then return {'sold_out', 0} end
    n = redis.call('HINCRBY', KEYS[1], 'op_tickets', 1)
    redis.call('HSET', KEYS[16], ARGV[10], n)
    redis.call('SETRANGE', KEYS[17], (n - 1) * 10, ARGV[10])  -- the list, by ticket number
    ticket = n
    return nil
  end
  if now_ms < draw_ms then  -- the pre-queue and the window: nobody's order is known yet
    if not ticket then
      local refused = new_ticket()
      if refused then return refused end
    end
    return ticketed(-1, draw_ms)
  end
  if not drawn then  -- the first script after the window: its tickets are counted for good
    drawn = n
    redis.call('HSET', KEYS[1], 'op_n', n)
  end
  if not ticket then
    local refused = new_ticket()
    if refused then return refused end
    rank = ticket  -- after the window: the end of the queue, in arrival order
    if rank <= slots then  -- nobody is waiting for this place: admitted now, a window of its own
      redis.call('ZADD', KEYS[11], rank, rank .. ':' .. now_ms)
    end
  elseif ticket <= drawn then
    rank = draw_rank(ticket, drawn, q[3])
  else
    rank = ticket
  end
  local frontier = math.min(slots, n)
  if rank > frontier then
    if exhausted() then return {'sold_out', 0} end
    return ticketed(rank - frontier - 1, tonumber(q[8] or '0'))
  end
  local closed = rank < tonumber(q[5])
  if not closed then
    local wave = redis.call('ZREVRANGEBYSCORE', KEYS[11], rank, '-inf', 'LIMIT', 0, 1)
    closed = now_ms >= tonumber(string.match(wave[1], ':(%d+)$')) + tonumber(q[6]) * 1000
  end
  -- as in a booking queue: once every ticket has been admitted, what is left is for anyone
  if closed and slots < n then return {'admission_passed'} end
end

local campaign, bound_user = '', ''
if fcode ~= '' then
  -- Only guesses count: a code this sale does not have, or one bound to another shopper.
  -- "fcode_used" and "fcode_revoked" name real codes (a race lost to another holder, a retry
  -- of one's own redemption) and count nothing. A limit of 0 is off: its counter is neither
  -- read nor written (the address limit is off unless configured, as addresses are shared).
  local counters = {}
  for i = 8, 9 do
    local allowed = tonumber(ARGV[i - 1]) or 0
    if allowed > 0 then
      counters[#counters + 1] = i
      if tonumber(redis.call('GET', KEYS[i]) or '0') >= allowed then
        return {'fcode_throttled', redis.call('PTTL', KEYS[i])}
      end
    end
  end
  local function guess()
    for _, i in ipairs(counters) do
      if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], tonumber(ARGV[9])) end
    end
    redis.call('HINCRBY', KEYS[1], 'fcode_failures', 1)
    return {'fcode_invalid'}
  end
  local record = redis.call('HGET', KEYS[7], fcode)
  if not record then return guess() end
  local state, camp, _, bound = string.match(record, '^(%a)|([^|]*)|([^|]*)|(.*)$')
  if bound ~= '' and bound ~= user then return guess() end
  if state == 'r' then return {'fcode_revoked'} end
  if state == 'u' then return {'fcode_used'} end
  campaign, bound_user = camp, bound
end

local limit = tonumber(sale[5])
if qty > limit then return {'quantity_above_limit', limit} end
local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
if held + qty > limit then return {'limit_reached', held, limit} end
local available = tonumber(sale[(pool == 'available') and 4 or 7])
if available < qty then return {'sold_out', available} end

local expires_ms = now_ms + tonumber(sale[6]) * 1000
redis.call('HINCRBY', KEYS[1], pool, -qty)
redis.call('HINCRBY', KEYS[1], 'reserved', qty)
redis.call('HINCRBY', KEYS[2], user, qty)
redis.call('HSET', KEYS[5], 'user', user, 'qty', qty, 'status', 'reserved', 'v', 1,
  'created_ms', now_ms, 'updated_ms', now_ms, 'expires_ms', expires_ms,
  'fcode', fcode, 'campaign', campaign)
if rank then
  redis.call('HSET', KEYS[5], 'rank', rank)
  redis.call('HINCRBY', KEYS[12], user, qty)
  redis.call('SETBIT', KEYS[13], rank, 1)
end
if fcode ~= '' then
  redis.call('HSET', KEYS[7], fcode, table.concat({'u', campaign, order_id, bound_user}, '|'))
end
redis.call('ZADD', KEYS[3], expires_ms, order_id)
redis.call('XADD', KEYS[4], '*', 'order_id', order_id, 'user', user, 'qty', qty,
  'status', 'reserved', 'v', 1, 'created_ms', now_ms, 'updated_ms', now_ms,
  'expires_ms', expires_ms, 'fcode', fcode, 'campaign', campaign)
if fingerprint ~= '' then
  redis.call('SET', KEYS[6],
    table.concat({fingerprint, order_id, qty, now_ms, expires_ms, campaign}, '|'),
    'EX', tonumber(ARGV[5]))
end
return {'ok', order_id, qty, now_ms, expires_ms, campaign}
