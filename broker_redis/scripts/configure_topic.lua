--[[ configure_topic: set or remove a topic's retention, then trim its history to it.

The trimming is bounded per call; the client calls again while it is not finished.

KEYS: 1 retention  2 log  3 logged  4 refs  5 msg  6 eventkeys  7 pins
ARGV: 1 max_age (seconds, '' = none)  2 max_events ('' = none)  3 now ('' = server TIME)
      4 most history entries to trim
Returns: 1 once the history is trimmed to the retention, 3 to call again
]]
--- @include "history"

local retention, log, logged, refs, msg, eventkeys, pins = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local t = {retention = retention, log = log, logged = logged, refs = refs, msg = msg, eventkeys = eventkeys, pins = pins}

-- The position counter stays when retention goes: positions never repeat.
for i, field in ipairs({'max_age', 'max_events'}) do
  if ARGV[i] == '' then
    redis.call('HDEL', retention, field)
  else
    redis.call('HSET', retention, field, ARGV[i])
  end
end
local rt = retention_of(retention)
return trim_log(t, rt, now_from(ARGV[3]), tonumber(ARGV[4])) and 1 or 3
