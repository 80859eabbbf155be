-- configure_topic: store a topic's retention (both NULL: none, and no history) and,
-- unless NULL, its partition count; a call with a count and no retention keeps the
-- retention.
--
-- Arguments: topic, max_age (seconds or NULL), max_events (or NULL), partitions (or
-- NULL: keep), now (NULL = the server's clock). Returns one row: o_holding, NULL once
-- stored, or, changing nothing, what holds the topic's events when the call would change
-- its partition count while the topic holds one (a group's delivery in any state, or a
-- retained event), for the client's PartitionChangeRefused; and o_partitions, the count
-- the topic has after the call. A change forgets the topic's dedup windows, as a store
-- keeping partitions apart does.
--
-- A change first takes the topic's lock, which publishes share: a publish in flight
-- (in a caller's transaction, say) commits first, so the check sees what it wrote, and
-- none writes until the change commits. The check stops at the first holder it finds.
--
-- What the old retention no longer covers is gone for good, whatever the new one keeps:
-- the floor moves past it (removing retention moves it past the whole history), so a
-- longer retention never brings back an entry the trimming had yet to free. Then a
-- bounded batch is trimmed; publishes and claims trim the rest.

CREATE FUNCTION @schema@.configure_topic(
    p_topic text, p_max_age double precision, p_max_events bigint, p_partitions integer,
    p_now double precision
) RETURNS TABLE (o_holding text, o_partitions integer)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
    v_age double precision;
    v_count bigint;
    v_top bigint;
    v_partitions integer;
    gone bigint;
    holder text;
BEGIN
    IF p_partitions IS NOT NULL THEN
        -- Before the topics row, in the order publish takes them: no deadlock.
        PERFORM @schema@.topic_lock(p_topic);
    END IF;
    INSERT INTO @schema@.topics (topic) VALUES (p_topic) ON CONFLICT (topic) DO NOTHING;
    SELECT max_age, max_events, position, floor, partitions
    INTO v_age, v_count, v_top, gone, v_partitions
    FROM @schema@.topics WHERE topic = p_topic
    FOR UPDATE;
    IF p_partitions IS NOT NULL AND p_partitions <> v_partitions THEN
        SELECT grp INTO holder FROM @schema@.deliveries
        WHERE topic = p_topic ORDER BY grp COLLATE "C" LIMIT 1;
        IF holder IS NOT NULL THEN
            RETURN QUERY SELECT format('group %L holds events of the topic', holder), v_partitions;
            RETURN;
        END IF;
        IF EXISTS (
            SELECT 1 FROM @schema@.events e
            WHERE e.topic = p_topic AND e.position IS NOT NULL
              AND @schema@.covered(e.position, e.published_at, v_age, v_count, v_top, gone, now_)
        ) THEN
            RETURN QUERY SELECT 'its history retains events'::text, v_partitions;
            RETURN;
        END IF;
        DELETE FROM @schema@.dedup WHERE topic = p_topic;
        UPDATE @schema@.topics SET partitions = p_partitions WHERE topic = p_topic;
        v_partitions := p_partitions;
    END IF;
    IF p_partitions IS NOT NULL AND p_max_age IS NULL AND p_max_events IS NULL THEN
        RETURN QUERY SELECT NULL::text, v_partitions;
        RETURN;
    END IF;
    IF (v_age IS NULL AND v_count IS NULL) OR (p_max_age IS NULL AND p_max_events IS NULL) THEN
        gone := v_top;
    ELSE
        IF v_count IS NOT NULL THEN
            gone := greatest(gone, v_top - v_count);
        END IF;
        IF v_age IS NOT NULL THEN
            -- The first entry young enough; the expired ones before it are what the
            -- trimming has yet to free, so this scan is as short as a trim.
            gone := greatest(gone, coalesce((
                SELECT position - 1 FROM @schema@.events
                WHERE topic = p_topic AND position IS NOT NULL AND position > gone
                  AND now_ < published_at + v_age
                ORDER BY position LIMIT 1
            ), v_top));
        END IF;
    END IF;
    UPDATE @schema@.topics SET max_age = p_max_age, max_events = p_max_events, floor = gone
    WHERE topic = p_topic;
    PERFORM @schema@.trim_history(p_topic, now_, 1000);
    RETURN QUERY SELECT NULL::text, v_partitions;
END
$$;
