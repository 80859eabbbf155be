-- rewind: deliver a topic's retained events again to one of its groups.
--
-- Arguments: topic, group, history (seconds back, 'Infinity' = all), dry run (only
-- count), now (NULL = the server's clock). Returns: how many events (would) join the
-- back of the group's queue, or -1 if the group does not subscribe the topic.
--
-- The events retained and published at most `history` s ago that the group does not
-- hold (in any state) join the back of its queue as fresh deliveries, oldest first, in
-- one transaction (copy_history), under the topic's lock: a publish running meanwhile
-- comes wholly before or after, in the queue and in each key's order.

CREATE FUNCTION @schema@.rewind(
    p_topic text, p_grp text, p_history double precision, p_dry_run boolean,
    p_now double precision
) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stored boolean;
BEGIN
    IF NOT p_dry_run THEN
        PERFORM @schema@.topic_lock(p_topic);
    END IF;
    SELECT ordered INTO stored FROM @schema@.subscriptions
    WHERE topic = p_topic AND grp = p_grp;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    RETURN @schema@.copy_history(
        p_topic, p_grp, stored, p_history, @schema@.now_of(p_now), p_dry_run
    );
END
$$;
