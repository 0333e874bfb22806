#!lua
-- repair_counters: set a sale's unit counters to what its orders say, but only if they still
-- hold the values reconcile read (compare-and-set): a sale that moved meanwhile is left alone
-- and reconcile is run again.
--
-- KEYS[1]  sale hash
-- ARGV     triples: counter name, the value read, the value to set
-- Returns  1 when set, 0 when a counter had moved (nothing changed)
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return 0 end
end
for i = 1, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
end
return 1
