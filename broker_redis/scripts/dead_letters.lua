--[[ dead_letters: read up to `limit` dead events of one (topic, group), oldest death first,
after skipping the `offset` oldest (a page of a long list: LRANGE costs O(offset + limit)).

Read-only; a script so that body and record come from one consistent moment.

KEYS: 1 msg  2 dead  3 deadinfo
ARGV: 1 limit  2 offset
Returns: per dead event: id, record (JSON {reason, error?, attempts, died_at}), body
]]
local msg, dead, deadinfo = KEYS[1], KEYS[2], KEYS[3]
local limit, offset = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
if limit < 1 then
  return out
end
for _, id in ipairs(redis.call('LRANGE', dead, offset, offset + limit - 1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', deadinfo, id) or '{}'
  out[#out + 1] = redis.call('HGET', msg, id) or ''
end
return out
