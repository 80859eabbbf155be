-- subscribe: make a group a durable subscriber of one topic, keeping its options.
--
-- Arguments: topic, group, ordered (NULL = keep the stored options; false for a new
-- subscription). Returns: the stored ordered flag, and whether it differs from the one
-- asked for (the client then refuses the call; nothing changed).

CREATE FUNCTION @schema@.subscribe(p_topic text, p_grp text, p_ordered boolean)
RETURNS TABLE (o_ordered boolean, o_mismatch boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stored boolean;
BEGIN
    INSERT INTO @schema@.subscriptions (topic, grp, ordered)
    VALUES (p_topic, p_grp, coalesce(p_ordered, false))
    ON CONFLICT (topic, grp) DO NOTHING;
    SELECT ordered INTO stored FROM @schema@.subscriptions WHERE topic = p_topic AND grp = p_grp;
    RETURN QUERY SELECT stored, p_ordered IS NOT NULL AND p_ordered <> stored;
END
$$;
