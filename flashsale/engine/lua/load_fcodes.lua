#!lua
-- load_fcodes: add issued F-codes to a sale. A code already present keeps its state, so
-- loading the same campaign again (after a crash, or from PostgreSQL) changes nothing.
--
-- KEYS[1]  F-codes hash
-- ARGV     digest, campaign, bound user ("" for a bearer code), digest, campaign, user, ...
-- Returns  number of codes added now
local added = 0
for i = 1, #ARGV, 3 do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i],
    table.concat({'a', ARGV[i + 1], '', ARGV[i + 2]}, '|'))
end
return added
