-- nack: give a leased event back, to the front of READY or to DELAYED for p_delay s.
--
-- Arguments: topic, group, id, token, delay (seconds), error (NULL keeps the last one),
-- now (NULL = the server's clock). Returns: whether it was given back (false: stale).
--
-- The attempt stays counted. Its handler failed rather than crashed: it is a suspect
-- no more. An immediate retry wakes the topic's waiters.

CREATE FUNCTION @schema@.nack(
    p_topic text, p_grp text, p_id text, p_token text, p_delay double precision,
    p_error text, p_now double precision
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
    v_tid tid := @schema@.leased(p_topic, p_grp, p_id, p_token, now_);
BEGIN
    IF v_tid IS NULL THEN
        RETURN false;
    END IF;
    UPDATE @schema@.deliveries
    SET state = CASE WHEN p_delay > 0 THEN 'd' ELSE 'r' END::"char",
        deadline = CASE WHEN p_delay > 0 THEN now_ + p_delay END,
        pos = CASE WHEN p_delay > 0 THEN pos ELSE -nextval('@schema@.positions') END,
        sub = 0, token = NULL, suspect = false, error = coalesce(p_error, error)
    WHERE ctid = v_tid;
    IF p_delay <= 0 THEN
        PERFORM @schema@.wake(p_topic);
    END IF;
    RETURN true;
END
$$;
