--[[ copy_history: copy the next part of a topic's history into one group.

A copy in progress (`pins`, field: the group) was begun by subscribe (a new group from
history: it joins the topic's groups once the copy reaches the end of the history) or by
rewind (an existing group: the copy ends at the entry that was last when it began). Each
call reads at most ARGV[2] entries past the copy's cursor. An entry is copied when it
was published at or after the copy's start time, when it was retained as the copy began
(or published since), and when the group does not hold its id (`held`); it joins the
back of the group's READY queue, behind its key's events in an ordered group. While a
copy is in progress, trimming leaves the entries past its cursor alone.

KEYS: 1 groups  2 ordered  3 log  4 refs  5 eventkeys  6 pins  7 seq  8 ready  9 marker
      10 lanes  11 heads  12 held
ARGV: 1 group  2 most entries to read
Returns: {1 once the copy is complete (or there was none) else 0, events copied}
]]
--- @include "history"
--- @include "lanes"
--- @include "wake"

local groups, ordered, log, refs, eventkeys, pins, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local ready, marker, lanes, heads, held = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local group, most = ARGV[1], tonumber(ARGV[2])

local raw = redis.call('HGET', pins, group)
if not raw then
  return {1, 0}
end
local pin = cjson.decode(raw)
local is_ordered = redis.call('SISMEMBER', ordered, group) == 1
local entries = redis.call('XRANGE', log, '(' .. pin.c, '+', 'COUNT', most)
local copied, complete = 0, #entries < most
local rt = {age = pin.age, count = pin.count, position = pin.pos}
for _, entry in ipairs(entries) do
  if pin.upto and after(entry[1], pin.upto) then
    complete = true
    break
  end
  pin.c = entry[1]
  local f = entry_fields(entry)
  local t, p, id = tonumber(f.t), tonumber(f.p), f.i
  local live = p > pin.pos  -- published since the copy began
  local wanted = (pin.from == nil or t >= pin.from) and (live or not expired(rt, pin.now, t, p))
  if wanted and redis.call('SADD', held, id) == 1 then
    redis.call('HINCRBY', refs, id, 1)
    local key = is_ordered and redis.call('HGET', eventkeys, id)
    if key then
      join_key(ready, lanes, heads, key, redis.call('INCR', seq), id)
    else
      redis.call('RPUSH', ready, id)
    end
    copied = copied + 1
  end
  if pin.upto and entry[1] == pin.upto then
    complete = true
    break
  end
end
if complete then
  if pin.join then
    redis.call('SADD', groups, group)
  end
  redis.call('HDEL', pins, group)
else
  redis.call('HSET', pins, group, cjson.encode(pin))
end
if copied > 0 then
  wake(marker)
end
return {complete and 1 or 0, copied}
