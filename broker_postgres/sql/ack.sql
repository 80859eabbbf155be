-- ack: mark leased events of one (topic, group) DONE.
--
-- Arguments: topic, group, ids, tokens (pairs), now (NULL = the server's clock).
-- Returns: (id, token) of each receipt acked. A receipt counts only while its lease is live (same token,
-- deadline not passed); a stale one changes nothing.
--
-- A DONE delivery is deleted at once, and the event's body with the last group to
-- finish it, so the tables hold only live work. In an ordered group each acked event's
-- key lets its next event out: the lanes are locked in key order (no deadlock between
-- settlements of several keys), the events join READY in the order of the receipts.

CREATE FUNCTION @schema@.ack(
    p_topic text, p_grp text, p_ids text[], p_tokens text[], p_now double precision
) RETURNS TABLE (o_id text, o_token text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
    done_ids text[];
    done_tokens text[];
    done_seqs bigint[];
    lane_keys text[];
    lane_subs bigint[];
    back bigint;
BEGIN
    WITH gone AS (
        DELETE FROM @schema@.deliveries d
        USING unnest(p_ids, p_tokens) WITH ORDINALITY u(id, token, ord)
        WHERE d.topic = p_topic AND d.grp = p_grp AND d.event_id = u.id
          AND d.state = 'l' AND d.token = u.token AND d.deadline > now_
        RETURNING d.event_id, d.seq, d.key, d.token, u.ord
    )
    SELECT array_agg(event_id), array_agg(token), array_agg(seq),
           array_agg(key ORDER BY key) FILTER (WHERE key IS NOT NULL),
           array_agg(ord ORDER BY key) FILTER (WHERE key IS NOT NULL)
    INTO done_ids, done_tokens, done_seqs, lane_keys, lane_subs
    FROM gone;
    IF done_ids IS NULL THEN
        RETURN;
    END IF;
    PERFORM @schema@.drop_events(p_topic, done_seqs);
    IF lane_keys IS NOT NULL THEN
        back := nextval('@schema@.positions');
        FOR i IN 1 .. cardinality(lane_keys) LOOP
            PERFORM @schema@.pass_key(p_topic, p_grp, lane_keys[i], back, lane_subs[i]::integer);
        END LOOP;
    END IF;
    RETURN QUERY SELECT * FROM unnest(done_ids, done_tokens);
END
$$;
