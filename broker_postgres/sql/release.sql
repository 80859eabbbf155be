-- release: give leased events back to the front of READY, their attempts uncounted.
--
-- Arguments: topic, group, ids, tokens (pairs), now (NULL = the server's clock).
-- Returns: (id, token) of given back (the others were stale).
--
-- What a stopping consumer does with the events it will not handle: no failed attempt,
-- so the count the claim added is taken back. An event keeps its suspect mark. The
-- events go back in front of READY, in the order given.

CREATE FUNCTION @schema@.release(
    p_topic text, p_grp text, p_ids text[], p_tokens text[], p_now double precision
) RETURNS TABLE (o_id text, o_token text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
    front bigint := -nextval('@schema@.positions');
    back integer := 0;
    i integer;
    v_tid tid;
BEGIN
    -- In event id order, as unsubscribe locks a group's rows: no deadlock between them.
    FOR i IN
        SELECT r.n FROM unnest(p_ids) WITH ORDINALITY r(id, n) ORDER BY r.id COLLATE "C", r.n
    LOOP
        v_tid := @schema@.leased(p_topic, p_grp, p_ids[i], p_tokens[i], now_);
        CONTINUE WHEN v_tid IS NULL;
        UPDATE @schema@.deliveries
        SET state = 'r', pos = front, sub = i, attempts = attempts - 1, token = NULL,
            deadline = NULL
        WHERE ctid = v_tid;
        back := back + 1;
        o_id := p_ids[i];
        o_token := p_tokens[i];
        RETURN NEXT;
    END LOOP;
    IF back > 0 THEN
        PERFORM @schema@.wake(p_topic);
    END IF;
END
$$;
