-- configure_topic: store a topic's retention (both NULL: none, and no history) and,
-- unless NULL, its partition count.
--
-- Arguments: topic, max_age (seconds or NULL), max_events (or NULL), partitions (or
-- NULL: keep), now (NULL = the server's clock). Returns NULL once stored, or, changing
-- nothing, what holds the topic's events when the call would change its partition count
-- while the topic holds one (a group's delivery in any state, or a retained event): the
-- client raises PartitionChangeRefused with it. A change forgets the topic's dedup
-- windows, as a store keeping partitions apart does.
--
-- What the old retention no longer covers is gone for good, whatever the new one keeps:
-- the floor moves past it (removing retention moves it past the whole history), so a
-- longer retention never brings back an entry the trimming had yet to free. Then a
-- bounded batch is trimmed; publishes and claims trim the rest.

CREATE FUNCTION @schema@.configure_topic(
    p_topic text, p_max_age double precision, p_max_events bigint, p_partitions integer,
    p_now double precision
) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
    v_age double precision;
    v_count bigint;
    v_top bigint;
    v_partitions integer;
    gone bigint;
    holder text;
    held bigint;
BEGIN
    INSERT INTO @schema@.topics (topic) VALUES (p_topic) ON CONFLICT (topic) DO NOTHING;
    SELECT max_age, max_events, position, floor, partitions
    INTO v_age, v_count, v_top, gone, v_partitions
    FROM @schema@.topics WHERE topic = p_topic
    FOR UPDATE;
    IF p_partitions IS NOT NULL AND p_partitions <> v_partitions THEN
        SELECT grp, count(*) INTO holder, held FROM @schema@.deliveries
        WHERE topic = p_topic GROUP BY grp ORDER BY grp LIMIT 1;
        IF holder IS NOT NULL THEN
            RETURN format('group %L holds %s of its events', holder, held);
        END IF;
        SELECT count(*) INTO held FROM @schema@.events e
        WHERE e.topic = p_topic AND e.position IS NOT NULL
          AND @schema@.covered(e.position, e.published_at, v_age, v_count, v_top, gone, now_);
        IF held > 0 THEN
            RETURN format('its history retains %s events', held);
        END IF;
        DELETE FROM @schema@.dedup WHERE topic = p_topic;
        UPDATE @schema@.topics SET partitions = p_partitions WHERE topic = p_topic;
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
    RETURN NULL;
END
$$;
