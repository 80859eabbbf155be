-- kill: move a leased event to DEAD with a reason and the error.
--
-- Arguments: topic, group, id, token, reason, error (NULL keeps the last error a nack
-- reported), now (NULL = the server's clock). Returns: whether it died (false: stale).
-- The body stays until the dead letter is purged; in an ordered group the key goes on.

CREATE FUNCTION @schema@.kill(
    p_topic text, p_grp text, p_id text, p_token text, p_reason text, p_error text,
    p_now double precision
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
BEGIN
    IF @schema@.leased(p_topic, p_grp, p_id, p_token, now_) IS NULL THEN
        RETURN false;
    END IF;
    PERFORM @schema@.bury(p_topic, p_grp, p_id, now_, p_reason, p_error);
    RETURN true;
END
$$;
