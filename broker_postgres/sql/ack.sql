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
    done_seqs bigint[] := '{}';
    lane_keys text[] := '{}';
    lane_subs integer[] := '{}';
    v_seq bigint;
    v_key text;
    v_tid tid;
    back bigint;
    i integer;
    j integer;
BEGIN
    -- In event id order, as unsubscribe locks a group's rows: no deadlock between them.
    FOR i IN
        SELECT r.n FROM unnest(p_ids) WITH ORDINALITY r(id, n) ORDER BY r.id COLLATE "C", r.n
    LOOP
        v_tid := @schema@.leased(p_topic, p_grp, p_ids[i], p_tokens[i], now_);
        CONTINUE WHEN v_tid IS NULL;
        DELETE FROM @schema@.deliveries WHERE ctid = v_tid RETURNING seq, key INTO v_seq, v_key;
        done_seqs := done_seqs || v_seq;
        IF v_key IS NOT NULL THEN
            lane_keys := lane_keys || v_key;
            lane_subs := lane_subs || i;
        END IF;
        o_id := p_ids[i];
        o_token := p_tokens[i];
        RETURN NEXT;
    END LOOP;
    IF cardinality(done_seqs) = 0 THEN
        RETURN;
    END IF;
    PERFORM @schema@.drop_events(p_topic, done_seqs);
    IF cardinality(lane_keys) > 0 THEN
        back := nextval('@schema@.positions');
        FOR j IN
            SELECT k.n FROM unnest(lane_keys) WITH ORDINALITY k(key, n) ORDER BY k.key
        LOOP
            PERFORM @schema@.pass_key(p_topic, p_grp, lane_keys[j], back, lane_subs[j]);
        END LOOP;
    END IF;
END
$$;
