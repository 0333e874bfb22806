#!lua
-- pay: decide what a payment the payment service notified us of does to its order, once.
--
--   paid             the order was reserved and its deadline (against Redis's clock) not yet
--                    reached, and amount and currency are what it costs: reserved -> paid.
--   paid, late       the reservation had expired (its units went back to the sale, exactly
--                    once), but the payment may buy the order's units again as a buy would,
--                    jumping nobody: an arrival sale (no booking queue), open now, with the
--                    units available in the public lane and the shopper's limit allowing, and
--                    not an F-code order (its code went back to use); with an opening window
--                    only after its draw and once every ticket has been admitted. The units
--                    come from "available" as a buy's would, and must have been there before this
--                    payment came: the units of a reservation this very script expires are
--                    never taken straight back. Nothing is revived, nothing oversold.
--                    "expired" keeps counting the return; "paid_late" counts these units.
--   refund_required  otherwise, with the reason: order_not_found, order_cancelled,
--                    already_paid, currency_mismatch, amount_mismatch, reservation_expired.
--                    The order is unchanged (but for its version).
-- A reservation found past its deadline is expired here first (what the sweeper would do).
-- Every payment decided for an order bumps the order's version "v", so that each change
-- concerning an order has a sequence number of its own.
--
-- The outcome is recorded under the payment id (kept) and the notification's webhook-id
-- (expires): the same payment sent again, under any webhook-id, is answered with the first
-- record and changes nothing.
--
-- Events (for the PostgreSQL writer): a paid order's order event (status "paid", the new v,
-- with "payment_id" and "late"), then for every payment a payment event: kind "payment",
-- payment_id, order_id, amount_cents, currency, outcome, reason ("" when paid), late ("1" /
-- "0"), webhook_id, received_ms, decided_ms and, when the order exists, the order as the
-- payment left it: the order event's fields prefixed "order_" (order_user, order_qty,
-- order_status, order_v, order_created_ms, order_updated_ms, order_expires_ms, order_fcode,
-- order_campaign; order_v is the version the payment produced). Prefixed, so that a writer of
-- an earlier release, which takes any event without "kind=booking" for an order event, sets
-- a payment event aside as a dead letter (kept, retried later) instead of dropping it.
--
-- KEYS[1]  sale hash        KEYS[5]  order hash           KEYS[9]   payment record
-- KEYS[2]  holders hash     KEYS[6]  F-codes hash         KEYS[10]  webhook-id record
-- KEYS[3]  deadlines zset   KEYS[7]  queue holders hash
-- KEYS[4]  events stream    KEYS[8]  queue bits
-- ARGV[1]  order id         ARGV[4]  currency                 ARGV[7]  default currency (of a
-- ARGV[2]  payment id       ARGV[5]  webhook-id                         sale armed without one)
-- ARGV[3]  amount (cents)   ARGV[6]  received at (ms)         ARGV[8]  webhook-id ttl (s)
-- Returns  {"decided", record, units_returned}  decided now; record is JSON (below);
--                                              units_returned 1 when an expiry gave units back
--          {"replay", record, 0}                decided before: the first record
--          {"no_sale"}                          the sale is not armed: nothing recorded
-- Record   {"payment_id", "order_id", "outcome", "reason", "late", "amount_cents", "currency",
--           "webhook_id", "received_ms", "decided_ms", "order_version"}; numbers as strings,
--           reason and order_version "" when none
local order_id, payment_id, amount, currency = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local webhook_id, received_ms, ttl_s = ARGV[5], ARGV[6], tonumber(ARGV[8])

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

local first = redis.call('GET', KEYS[10])
if first then return {'replay', first, 0} end
first = redis.call('GET', KEYS[9])
if first then
  redis.call('SET', KEYS[10], first, 'EX', ttl_s)
  return {'replay', first, 0}
end

local sale = redis.call('HMGET', KEYS[1], 'state', 'starts_ms', 'ends_ms', 'available',
  'per_user_limit', 'price_cents', 'currency', 'admission')
if not sale[1] then return {'no_sale'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local o = redis.call('HMGET', KEYS[5], 'user', 'qty', 'status', 'created_ms', 'expires_ms',
  'updated_ms', 'v', 'fcode', 'campaign', 'rank')
local outcome, reason, late, returned = 'refund_required', '', false, 0
local user, qty, status, v, updated_ms, expires_ms, fcode, campaign
if not o[1] then
  reason = 'order_not_found'
else
  user, qty, status, v = o[1], tonumber(o[2]), o[3], tonumber(o[7])
  updated_ms, expires_ms = tonumber(o[6]), tonumber(o[5])
  fcode, campaign = o[8] or '', o[9] or ''
  if status == 'reserved' and now_ms >= expires_ms then
    -- past its deadline: expire it now, exactly as expire.lua does
    redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
    redis.call('HINCRBY', KEYS[1], lane_of(fcode, qty), qty)
    redis.call('HINCRBY', KEYS[1], 'expired', qty)
    redis.call('HINCRBY', KEYS[2], user, -qty)
    if fcode ~= '' then
      local record = redis.call('HGET', KEYS[6], fcode)
      local state, camp, oid, bound = string.match(record or '', '^(%a)|([^|]*)|([^|]*)|(.*)$')
      if state == 'u' and oid == order_id then
        redis.call('HSET', KEYS[6], fcode, table.concat({'a', camp, '', bound}, '|'))
      end
    end
    local rank = tonumber(o[10])
    if rank and redis.call('HINCRBY', KEYS[7], user, -qty) <= 0 then
      redis.call('HDEL', KEYS[7], user)
      redis.call('SETBIT', KEYS[8], rank, 0)
      if rank < tonumber(redis.call('HGET', KEYS[1], 'adm_cursor')) then
        redis.call('HINCRBY', KEYS[1], 'adm_freed', 1)
      end
    end
    redis.call('ZREM', KEYS[3], order_id)
    status, v, updated_ms, returned = 'expired', v + 1, now_ms, 1
    redis.call('HSET', KEYS[5], 'status', status, 'updated_ms', now_ms, 'v', v)
    redis.call('XADD', KEYS[4], '*', 'order_id', order_id, 'user', user, 'qty', qty,
      'status', status, 'v', v, 'created_ms', o[4], 'updated_ms', now_ms,
      'expires_ms', expires_ms, 'fcode', fcode, 'campaign', campaign)
  end
  local admission = sale[8] or ''
  -- an opening window's queue: a late payment jumps nobody only once its draw is made and
  -- every ticket admitted
  local function nobody_waits()
    local q = redis.call('HMGET', KEYS[1], 'op_win_ms', 'adm_slots', 'op_tickets')
    local win = tonumber(q[1] or '0') or 0
    if win <= 0 then return true end
    return now_ms >= tonumber(sale[2]) + win and tonumber(q[2]) >= tonumber(q[3])
  end
  if status == 'cancelled' then
    reason = 'order_cancelled'
  elseif status == 'paid' then
    reason = 'already_paid'
  elseif currency ~= (sale[7] or ARGV[7]) then
    reason = 'currency_mismatch'
  elseif tonumber(amount) ~= tonumber(sale[6]) * qty then
    reason = 'amount_mismatch'
  elseif status == 'reserved' then
    outcome = 'paid'
    redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
    redis.call('HINCRBY', KEYS[1], 'paid', qty)
    redis.call('ZREM', KEYS[3], order_id)
  elseif fcode == '' and (admission == '' or admission == 'arrival') and nobody_waits()
      and sale[1] == 'active' and now_ms < tonumber(sale[3])
      and tonumber(sale[4]) >= qty  -- read before any expiry above
      and tonumber(redis.call('HGET', KEYS[2], user) or '0') + qty <= tonumber(sale[5]) then
    outcome, late = 'paid', true
    redis.call('HINCRBY', KEYS[1], 'available', -qty)
    redis.call('HINCRBY', KEYS[1], 'paid', qty)
    redis.call('HINCRBY', KEYS[1], 'paid_late', qty)
    redis.call('HINCRBY', KEYS[2], user, qty)
  else
    reason = 'reservation_expired'
  end
  v = v + 1
  if outcome == 'paid' then
    status, updated_ms = 'paid', now_ms
    redis.call('HSET', KEYS[5], 'status', status, 'updated_ms', now_ms, 'v', v,
      'payment_id', payment_id, 'paid_late', late and 1 or 0)
    redis.call('XADD', KEYS[4], '*', 'order_id', order_id, 'user', user, 'qty', qty,
      'status', status, 'v', v, 'created_ms', o[4], 'updated_ms', now_ms,
      'expires_ms', expires_ms, 'fcode', fcode, 'campaign', campaign,
      'payment_id', payment_id, 'late', late and '1' or '0')
  else
    redis.call('HSET', KEYS[5], 'v', v)
  end
end

local decided_ms = string.format('%.0f', now_ms)
local record = cjson.encode({
  payment_id = payment_id, order_id = order_id, outcome = outcome, reason = reason,
  late = late, amount_cents = amount, currency = currency, webhook_id = webhook_id,
  received_ms = received_ms, decided_ms = decided_ms,
  order_version = v and string.format('%d', v) or '',
})
redis.call('SET', KEYS[9], record)
redis.call('SET', KEYS[10], record, 'EX', ttl_s)
local event = {'kind', 'payment', 'payment_id', payment_id, 'order_id', order_id,
  'amount_cents', amount, 'currency', currency, 'outcome', outcome, 'reason', reason,
  'late', late and '1' or '0', 'webhook_id', webhook_id, 'received_ms', received_ms,
  'decided_ms', decided_ms}
if user then
  for _, x in ipairs({'order_user', user, 'order_qty', qty, 'order_status', status,
      'order_v', v, 'order_created_ms', o[4], 'order_updated_ms', updated_ms,
      'order_expires_ms', expires_ms, 'order_fcode', fcode, 'order_campaign', campaign}) do
    event[#event + 1] = x
  end
end
redis.call('XADD', KEYS[4], '*', unpack(event))
return {'decided', record, returned}
