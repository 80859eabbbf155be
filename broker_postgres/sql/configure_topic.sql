-- configure_topic: store a topic's retention (both NULL: none, and no history).
--
-- Arguments: topic, max_age (seconds or NULL), max_events (or NULL), now (NULL = the
-- server's clock). Returns nothing.
--
-- What the old retention no longer covers is gone for good, whatever the new one keeps:
-- the floor moves past it (removing retention moves it past the whole history), so a
-- longer retention never brings back an entry the trimming had yet to free. Then a
-- bounded batch is trimmed; publishes and claims trim the rest.

CREATE FUNCTION @schema@.configure_topic(
    p_topic text, p_max_age double precision, p_max_events bigint, p_now double precision
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
    v_age double precision;
    v_count bigint;
    v_top bigint;
    gone bigint;
BEGIN
    INSERT INTO @schema@.topics (topic) VALUES (p_topic) ON CONFLICT (topic) DO NOTHING;
    SELECT max_age, max_events, position, floor INTO v_age, v_count, v_top, gone
    FROM @schema@.topics WHERE topic = p_topic
    FOR UPDATE;
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
END
$$;
