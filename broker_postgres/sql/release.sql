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
    n integer;
BEGIN
    RETURN QUERY WITH released AS (
        UPDATE @schema@.deliveries d
        SET state = 'r', pos = front, sub = u.ord, attempts = d.attempts - 1, token = NULL,
            deadline = NULL
        FROM unnest(p_ids, p_tokens) WITH ORDINALITY u(id, token, ord)
        WHERE d.topic = p_topic AND d.grp = p_grp AND d.event_id = u.id
          AND d.state = 'l' AND d.token = u.token AND d.deadline > now_
        RETURNING d.event_id, u.token
    )
    SELECT * FROM released;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM @schema@.wake(p_topic);
    END IF;
END
$$;
