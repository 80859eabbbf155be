-- subscribe: make a group a durable subscriber of one topic, keeping its options.
--
-- Arguments: topic, group, ordered (NULL = keep the stored options; false for a new
-- subscription), history (seconds back, 'Infinity' = all, NULL = none), now (NULL = the
-- server's clock). Returns: the stored ordered flag, and whether it differs from the one
-- asked for (the client then refuses the call; nothing changed).
--
-- A new subscription takes the topic's lock alone (see history.sql): publishes running
-- now finish first, and later ones see the group in every statement. With a history, a
-- new group then receives the retained events at most `history` s old, oldest first, in
-- the same transaction (copy_history): each event is either in the history it copies or
-- published after it, to the group itself, never both, never neither (invariant 9).

CREATE FUNCTION @schema@.subscribe(
    p_topic text, p_grp text, p_ordered boolean, p_history double precision,
    p_now double precision
)
RETURNS TABLE (o_ordered boolean, o_mismatch boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stored boolean;
BEGIN
    INSERT INTO @schema@.subscriptions (topic, grp, ordered)
    VALUES (p_topic, p_grp, coalesce(p_ordered, false))
    ON CONFLICT (topic, grp) DO NOTHING
    RETURNING ordered INTO stored;
    IF FOUND THEN
        PERFORM @schema@.topic_lock(p_topic);
        IF p_history IS NOT NULL THEN
            PERFORM @schema@.copy_history(
                p_topic, p_grp, stored, p_history, @schema@.now_of(p_now), false
            );
        END IF;
    ELSE
        SELECT ordered INTO stored FROM @schema@.subscriptions
        WHERE topic = p_topic AND grp = p_grp;
    END IF;
    RETURN QUERY SELECT stored, p_ordered IS NOT NULL AND p_ordered <> stored;
END
$$;
