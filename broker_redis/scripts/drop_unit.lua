--[[ drop_unit: delete one unit of the layout a change of the partition count left.

Only a unit sealed by that change (ARGV[1]) is deleted (sealed, it holds no event), so a
repeated call changes nothing. The topic's own unit keeps its layout key, which the
client writes last. The unit's counters, for rates, are answered, for the client to add
them to the new layout: a change keeps them.

KEYS: 1 layout  2 msg  3 refs  4 groups  5 dedup  6 eventkeys  7 ordered  8 seq
      9 retention  10 log  11 logged  12 pins  13 published
      then per group g = 1..n: 0+14g ready  1+14g leased  2+14g tokens  3+14g attempts
      4+14g errors  5+14g delayed  6+14g dead  7+14g deadinfo  8+14g marker  9+14g suspects
      10+14g heads  11+14g lanes  12+14g held  13+14g acked
ARGV: 1 the seal ('<N>><M>')  2 '1' to keep the layout key  3 n
Returns: {1 if deleted else 0, events published, then per group the events it acked}
]]

local layout, msg, refs, groups, dedup, eventkeys, ordered, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local retention, log, logged, pins, published = KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local n = tonumber(ARGV[3])

if redis.call('GET', layout) ~= ARGV[1] then
  return {0, 0}
end
local out = {1, tonumber(redis.call('GET', published) or 0)}
redis.call('UNLINK', msg, refs, groups, dedup, eventkeys, ordered, seq, retention, log, logged, pins, published)
for g = 1, n do
  local ready, leased, tokens, attempts, errors = KEYS[0 + 14 * g], KEYS[1 + 14 * g], KEYS[2 + 14 * g], KEYS[3 + 14 * g], KEYS[4 + 14 * g]
  local delayed, dead, deadinfo, marker, suspects = KEYS[5 + 14 * g], KEYS[6 + 14 * g], KEYS[7 + 14 * g], KEYS[8 + 14 * g], KEYS[9 + 14 * g]
  local heads, lanes, held, acked = KEYS[10 + 14 * g], KEYS[11 + 14 * g], KEYS[12 + 14 * g], KEYS[13 + 14 * g]
  out[#out + 1] = tonumber(redis.call('GET', acked) or 0)
  redis.call('UNLINK', ready, leased, tokens, attempts, errors, delayed, dead, deadinfo, marker, suspects, heads, lanes, held, acked)
end
if ARGV[2] ~= '1' then
  redis.call('DEL', layout)
end
return out
