--[[ unsubscribe: end a group's subscription to one topic and drop its copy of every event.

Every event the group holds, READY, LEASED, DELAYED, DEAD or waiting in its lanes, is
released as if the group were done with it: a body no other group holds is freed (with
its ordering key), and the group's keys are deleted, so that nothing of it is left.
Other groups are untouched. A group that is not subscribed is left alone (idempotent).
The registry of topics is outside the topic's slot and keeps the topic's name, which
topics() leaves out while the topic has no groups.

KEYS: 1 msg  2 refs  3 groups  4 eventkeys  5 ordered  6 ready  7 leased  8 tokens
      9 attempts  10 errors  11 delayed  12 dead  13 deadinfo  14 marker  15 suspects
      16 heads  17 lanes
ARGV: 1 group
Returns: 1 if the group was subscribed, 0 if not
]]
--- @include "refs"

local msg, refs, groups, eventkeys, ordered = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ready, leased, tokens, attempts, errors = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local delayed, dead, deadinfo, marker, suspects = KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local heads, lanes = KEYS[16], KEYS[17]
local group = ARGV[1]

if redis.call('SREM', groups, group) == 0 then
  return 0
end
redis.call('SREM', ordered, group)

-- drop_refs takes one count per id: collect each held id once.
local held, seen = {}, {}
local function hold(id)
  if not seen[id] then
    seen[id] = true
    held[#held + 1] = id
  end
end
for _, list in ipairs({ready, dead}) do
  local length = redis.call('LLEN', list)
  for first = 0, length - 1, CHUNK do
    for _, id in ipairs(redis.call('LRANGE', list, first, first + CHUNK - 1)) do
      hold(id)
    end
  end
end
for _, zset in ipairs({leased, delayed}) do
  local length = redis.call('ZCARD', zset)
  for first = 0, length - 1, CHUNK do
    for _, id in ipairs(redis.call('ZRANGE', zset, first, first + CHUNK - 1)) do
      hold(id)
    end
  end
end
-- Lane members are `<key> NUL <position> NUL <id>` (includes/lanes.lua).
local waiting = redis.call('ZCARD', lanes)
for first = 0, waiting - 1, CHUNK do
  for _, member in ipairs(redis.call('ZRANGE', lanes, first, first + CHUNK - 1)) do
    local after_key = string.find(member, '\0', 1, true)
    hold(string.sub(member, string.find(member, '\0', after_key + 1, true) + 1))
  end
end

drop_refs(msg, refs, eventkeys, held)
redis.call('DEL', ready, leased, tokens, attempts, errors, delayed, dead, deadinfo, marker, suspects, heads, lanes)
return 1
