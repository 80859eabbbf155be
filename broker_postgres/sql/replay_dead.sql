-- replay_dead: move dead events of one (topic, group) to the back of READY.
--
-- Arguments: topic, group, ids (NULL = every dead event). Returns: how many moved.
--
-- In the order they died; attempts, errors and suspect marks start again. In an ordered
-- group a replayed keyed event joins the back of its key's history, as if published
-- now: it waits if its key has an event neither DONE nor DEAD.

CREATE FUNCTION @schema@.replay_dead(p_topic text, p_grp text, p_ids text[])
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    back bigint := nextval('@schema@.positions');
    r record;
    moved integer := 0;
    live_ integer;
BEGIN
    -- Locked in event id order first, as unsubscribe locks a group's rows.
    PERFORM 1 FROM @schema@.deliveries
    WHERE topic = p_topic AND grp = p_grp AND state = 'x'
      AND (p_ids IS NULL OR event_id = ANY (p_ids))
    ORDER BY event_id COLLATE "C"
    FOR UPDATE;
    FOR r IN
        SELECT event_id, key FROM @schema@.deliveries
        WHERE topic = p_topic AND grp = p_grp AND state = 'x'
          AND (p_ids IS NULL OR event_id = ANY (p_ids))
        ORDER BY pos, sub
        FOR UPDATE
    LOOP
        moved := moved + 1;
        live_ := NULL;
        IF r.key IS NOT NULL THEN
            INSERT INTO @schema@.lanes AS l (topic, grp, key, live)
            VALUES (p_topic, p_grp, r.key, 1)
            ON CONFLICT (topic, grp, key) DO UPDATE SET live = l.live + 1
            RETURNING l.live INTO live_;
        END IF;
        UPDATE @schema@.deliveries
        SET state = CASE WHEN coalesce(live_, 1) = 1 THEN 'r' ELSE 'w' END::"char",
            pos = CASE WHEN coalesce(live_, 1) = 1 THEN back END, sub = moved,
            key_seq = CASE WHEN r.key IS NOT NULL THEN nextval('@schema@.positions') END,
            attempts = 0, error = NULL, reason = NULL, died_at = NULL, suspect = false
        WHERE topic = p_topic AND grp = p_grp AND event_id = r.event_id;
    END LOOP;
    IF moved > 0 THEN
        PERFORM @schema@.wake(p_topic);
    END IF;
    RETURN moved;
END
$$;
