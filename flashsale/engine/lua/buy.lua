#!lua
-- buy: decide one purchase atomically: sale open, per-user limit, stock, idempotency, the
-- reservation with its deadline, and the order event for the PostgreSQL writer.
-- Every check runs before the first write, so a refusal changes nothing.
--
-- KEYS[1]  sale hash               KEYS[4]  events stream
-- KEYS[2]  holders hash            KEYS[5]  order hash (of ARGV[3])
-- KEYS[3]  deadlines zset          KEYS[6]  idempotency string (unused when ARGV[4] is "")
-- ARGV[1]  user id                 ARGV[4]  request fingerprint, "" without Idempotency-Key
-- ARGV[2]  quantity                ARGV[5]  idempotency ttl (s)
-- ARGV[3]  new order id
-- Returns  {"ok", order_id, qty, created_ms, expires_ms}      reserved now
--          {"replay", order_id, qty, created_ms, expires_ms}  the first answer to this request
--          {"idempotency_key_reused"} | {"sale_not_found"} | {"sale_ended"}
--          {"sale_not_open"} | {"quantity_above_limit", limit}
--          {"limit_reached", held, limit} | {"sold_out", available}
local user, qty, order_id, fingerprint = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]

-- The client library may resend a request whose reply it lost: the order id makes that a replay.
local mine = redis.call('HMGET', KEYS[5], 'qty', 'created_ms', 'expires_ms')
if mine[1] then
  return {'replay', order_id, tonumber(mine[1]), tonumber(mine[2]), tonumber(mine[3])}
end
if fingerprint ~= '' then
  local first = redis.call('GET', KEYS[6])
  if first then
    local fp, oid, q, created, expires = string.match(first, '^([^|]*)|([^|]*)|(%d+)|(%d+)|(%d+)$')
    if fp ~= fingerprint then return {'idempotency_key_reused'} end
    return {'replay', oid, tonumber(q), tonumber(created), tonumber(expires)}
  end
end

local sale = redis.call('HMGET', KEYS[1], 'state', 'starts_ms', 'ends_ms', 'available',
  'per_user_limit', 'ttl_s')
if not sale[1] then return {'sale_not_found'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if sale[1] == 'closed' or now_ms >= tonumber(sale[3]) then return {'sale_ended'} end
if sale[1] == 'paused' or now_ms < tonumber(sale[2]) then return {'sale_not_open'} end
local limit = tonumber(sale[5])
if qty > limit then return {'quantity_above_limit', limit} end
local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
if held + qty > limit then return {'limit_reached', held, limit} end
local available = tonumber(sale[4])
if available < qty then return {'sold_out', available} end

local expires_ms = now_ms + tonumber(sale[6]) * 1000
redis.call('HINCRBY', KEYS[1], 'available', -qty)
redis.call('HINCRBY', KEYS[1], 'reserved', qty)
redis.call('HINCRBY', KEYS[2], user, qty)
redis.call('HSET', KEYS[5], 'user', user, 'qty', qty, 'status', 'reserved', 'v', 1,
  'created_ms', now_ms, 'updated_ms', now_ms, 'expires_ms', expires_ms)
redis.call('ZADD', KEYS[3], expires_ms, order_id)
redis.call('XADD', KEYS[4], '*', 'order_id', order_id, 'user', user, 'qty', qty,
  'status', 'reserved', 'v', 1, 'created_ms', now_ms, 'updated_ms', now_ms,
  'expires_ms', expires_ms)
if fingerprint ~= '' then
  redis.call('SET', KEYS[6], table.concat({fingerprint, order_id, qty, now_ms, expires_ms}, '|'),
    'EX', tonumber(ARGV[5]))
end
return {'ok', order_id, qty, now_ms, expires_ms}
