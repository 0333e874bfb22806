#!lua
-- revoke_fcodes: revoke F-codes. A revoked code is refused from now on; an order already made
-- with it stands, and if that order is released the code stays revoked.
--
-- KEYS[1]  F-codes hash
-- ARGV     digests of the codes to revoke
-- Returns  {revoked now, already revoked, unknown}
local now, before, unknown = 0, 0, 0
for _, d in ipairs(ARGV) do
  local record = redis.call('HGET', KEYS[1], d)
  if not record then
    unknown = unknown + 1
  elseif string.sub(record, 1, 1) == 'r' then
    before = before + 1
  else
    redis.call('HSET', KEYS[1], d, 'r' .. string.sub(record, 2))
    now = now + 1
  end
end
return {now, before, unknown}
