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
BEGIN
    RETURN QUERY WITH extended AS (
        UPDATE @schema@.deliveries d SET deadline = greatest(d.deadline, now_ + p_lease)
        FROM unnest(p_ids, p_tokens) u(id, token)
        WHERE d.topic = p_topic AND d.grp = p_grp AND d.event_id = u.id
          AND d.state = 'l' AND d.token = u.token AND d.deadline > now_
        RETURNING d.event_id, d.token
    )
    SELECT * FROM extended;
END
$$;
