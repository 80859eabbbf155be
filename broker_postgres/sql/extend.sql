-- extend: make live leases of one (topic, group) last at least p_lease s from now.
--
-- Arguments: topic, group, ids, tokens (pairs), lease (seconds), now (NULL = the
-- server's clock). Returns: (id, token) of whose lease is live (and so extended).
--
-- A lease never gets shorter (greatest), so a consumer's own idea of its lease never
-- outlives the store's (fencing).

CREATE FUNCTION @schema@.extend(
    p_topic text, p_grp text, p_ids text[], p_tokens text[], p_lease double precision,
    p_now double precision
) RETURNS TABLE (o_id text, o_token text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
    i integer;
    v_tid tid;
BEGIN
    -- In event id order, as unsubscribe locks a group's rows: no deadlock between them.
    FOR i IN
        SELECT r.n FROM unnest(p_ids) WITH ORDINALITY r(id, n) ORDER BY r.id COLLATE "C", r.n
    LOOP
        v_tid := @schema@.leased(p_topic, p_grp, p_ids[i], p_tokens[i], now_);
        CONTINUE WHEN v_tid IS NULL;
        UPDATE @schema@.deliveries SET deadline = greatest(deadline, now_ + p_lease)
        WHERE ctid = v_tid;
        o_id := p_ids[i];
        o_token := p_tokens[i];
        RETURN NEXT;
    END LOOP;
END
$$;
