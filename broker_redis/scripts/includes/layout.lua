-- A partitioned topic keeps each partition in a unit of its own (keys.py); a call is
-- built for the partition count its client believes in. `layout_moved` compares that
-- count (text) with the one the unit stores in its `layout` key (a topic's own unit of
-- one partition may have none: absent means 1): nil while they agree, else the reply a
-- script gives without changing anything, {'~layout', stored value or ''}, so that the
-- client learns the count again and calls the right units ('~' is in no name).
local function layout_moved(layout, count)
  local stored = redis.call('GET', layout)
  if stored == count or (not stored and count == '1') then
    return nil
  end
  return {'~layout', stored or ''}
end
