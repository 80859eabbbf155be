-- purge_dead: delete dead events of one (topic, group) for good.
--
-- Arguments: topic, group, ids (NULL = every dead event). Returns: how many.
-- The body goes with the last group that held the event.

CREATE FUNCTION @schema@.purge_dead(p_topic text, p_grp text, p_ids text[])
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    seqs bigint[];
BEGIN
    -- Locked in event id order first, as unsubscribe locks a group's rows.
    PERFORM 1 FROM @schema@.deliveries
    WHERE topic = p_topic AND grp = p_grp AND state = 'x'
      AND (p_ids IS NULL OR event_id = ANY (p_ids))
    ORDER BY event_id COLLATE "C"
    FOR UPDATE;
    WITH gone AS (
        DELETE FROM @schema@.deliveries
        WHERE topic = p_topic AND grp = p_grp AND state = 'x'
          AND (p_ids IS NULL OR event_id = ANY (p_ids))
        RETURNING seq
    )
    SELECT array_agg(seq) INTO seqs FROM gone;
    IF seqs IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM @schema@.drop_events(p_topic, seqs);
    RETURN cardinality(seqs);
END
$$;
