#!lua
-- set_state: pause, resume or close a sale. "closed" is final.
--
-- KEYS[1]  sale hash
-- ARGV[1]  new state: "active", "paused" or "closed"
-- Returns  {"ok", previous_state} | {"sale_not_found"} | {"sale_ended"} (already closed)
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'sale_not_found'} end
if state == 'closed' and ARGV[1] ~= 'closed' then return {'sale_ended'} end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return {'ok', state}
