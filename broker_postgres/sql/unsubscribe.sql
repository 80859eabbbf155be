-- unsubscribe: end a group's subscription to one topic and drop its every copy.
--
-- Arguments: topic, group. Returns: whether the group was subscribed.
--
-- Under the topic's lock (see history.sql), so that no publish running meanwhile
-- leaves a copy behind for the gone group. Every delivery row of the group goes, in
-- any state (READY, waiting behind its key, LEASED, DELAYED, DEAD), with its lanes; each
-- event is let go as an ack lets it go (drop_events), so a body neither another group
-- nor the history holds is deleted, and its id may be published anew. The group's
-- receipts find no row any more: they are stale.

CREATE FUNCTION @schema@.unsubscribe(p_topic text, p_grp text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    seqs bigint[];
BEGIN
    PERFORM @schema@.topic_lock(p_topic);
    DELETE FROM @schema@.subscriptions WHERE topic = p_topic AND grp = p_grp;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- Rows locked in event id order, as settlements lock theirs; then what a settlement
    -- locks after its rows, in its order: events, then lanes.
    PERFORM 1 FROM @schema@.deliveries WHERE topic = p_topic AND grp = p_grp
    ORDER BY event_id COLLATE "C"
    FOR UPDATE;
    WITH gone AS (
        DELETE FROM @schema@.deliveries WHERE topic = p_topic AND grp = p_grp RETURNING seq
    )
    SELECT array_agg(seq) INTO seqs FROM gone;
    IF seqs IS NOT NULL THEN
        PERFORM @schema@.drop_events(p_topic, seqs);
    END IF;
    DELETE FROM @schema@.lanes WHERE topic = p_topic AND grp = p_grp;
    RETURN true;
END
$$;
