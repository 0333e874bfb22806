#!lua
-- repair_holders: set shoppers' held units to what their orders say, each only if it still
-- holds the value reconcile read (compare-and-set; a shopper who bought meanwhile is skipped).
--
-- KEYS[1]  holders hash
-- ARGV     triples: user id, the value read ("0" for none), the value to set
-- Returns  how many shoppers were set
local set = 0
for i = 1, #ARGV, 3 do
  local now = redis.call('HGET', KEYS[1], ARGV[i]) or '0'
  if now == ARGV[i + 1] then
    if ARGV[i + 2] == '0' then
      redis.call('HDEL', KEYS[1], ARGV[i])
    else
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    end
    set = set + 1
  end
end
return set
