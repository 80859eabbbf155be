--[[ ack: mark leased events DONE for one (topic, group).

A receipt counts only while its lease is live (same token, deadline not passed); a stale
one changes nothing. The body is freed once no group holds the event.

KEYS: 1 msg  2 refs  3 eventkeys  4 leased  5 tokens  6 attempts  7 errors  8 suspects
      9 ready  10 lanes  11 heads  12 marker  13 held  14 acked
ARGV: 1 now ('' = server TIME), then pairs: event id, token
Returns: per pair, 1 if acked, 0 if stale
]]
--- @include "now"
--- @include "chunks"
--- @include "refs"
--- @include "lanes"

local msg, refs, eventkeys, leased, tokens, attempts, errors, suspects = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local ready, lanes, heads, marker, held, acked = KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14]
local now = now_from(ARGV[1])
-- Every lookup and every write is one call per key for the whole batch, not per event.
local ids = {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
end
local lease_tokens = get_chunked('HMGET', tokens, ids)
local deadlines = get_chunked('ZMSCORE', leased, ids)
local out, done, settled = {}, {}, {}
for i, id in ipairs(ids) do
  -- The check of holds_lease (includes/lease.lua) on values read in bulk; an id acked
  -- earlier in this batch no longer holds a lease, as it would not one at a time.
  if not settled[id] and lease_tokens[i] == ARGV[2 * i + 1] and deadlines[i] and tonumber(deadlines[i]) > now then
    settled[id] = true
    done[#done + 1] = id
    out[i] = 1
  else
    out[i] = 0
  end
end
call_chunked('ZREM', leased, done, 1, #done)
call_chunked('HDEL', tokens, done, 1, #done)
call_chunked('HDEL', attempts, done, 1, #done)
call_chunked('HDEL', errors, done, 1, #done)
call_chunked('SREM', suspects, done, 1, #done)
-- In an ordered group, each acked event's key lets its next event out. Only ordered
-- groups have heads: any other group pays one EXISTS, not a lookup per event.
if #done > 0 and redis.call('EXISTS', heads) == 1 then
  local keys_of = get_chunked('HMGET', eventkeys, done)
  for i, id in ipairs(done) do
    if keys_of[i] then
      pass_key(ready, lanes, heads, marker, keys_of[i], id)
    end
  end
end
-- Only groups of topics with retention record what they hold (for rewind).
if #done > 0 and redis.call('EXISTS', held) == 1 then
  call_chunked('SREM', held, done, 1, #done)
end
drop_refs(msg, refs, eventkeys, done)
if #done > 0 then
  redis.call('INCRBY', acked, #done)
end
return out
