-- common: helpers the transition functions share.
--
-- now_of(p_now): p_now, or the server's clock when it is NULL (always, outside tests).
-- wake(topic): the payload-free NOTIFY hint that a topic has work; PostgreSQL folds
--   repeated notifications of one channel in a transaction into one.
-- reap(topic, group, now): expired leases (marked suspect) and due retries back to the
--   front of READY, the first to expire or fall due first; at most 1000 per call.
-- pass_key(topic, group, key, pos, sub): an event of the key is DONE or DEAD: the next
--   one waiting (by key_seq, then sub: events a history copy placed together share a
--   key_seq), if any, joins the back of READY at (pos, sub). Returns whether one did.
-- bury(topic, group, id, now, reason, error): a delivery to DEAD (error NULL keeps the
--   last one), its key passed on.
-- drop_events(topic, seqs): groups finished with these events: the last one deletes it.
-- leased(topic, group, id, token, now): the row a receipt leases, locked, or NULL when
--   the receipt is stale (another token, not leased, or past its deadline).
--
-- Rows are found by primary key, then changed by their ctid, while locked: a plan no
-- statistics can spoil. Queue tables grow from empty faster than ANALYZE runs, and with
-- stale statistics the planner would rather scan a partial index of the whole queue.

CREATE FUNCTION @schema@.now_of(p_now double precision) RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(p_now, extract(epoch FROM clock_timestamp())::double precision)
$$;

CREATE FUNCTION @schema@.wake(p_topic text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_notify('@channel@' || left(md5(p_topic), 20), '')
$$;

CREATE FUNCTION @schema@.reap(p_topic text, p_grp text, p_now double precision) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    front bigint;
    rank integer := 0;
    r record;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM @schema@.deliveries
        WHERE topic = p_topic AND grp = p_grp AND state IN ('l', 'd') AND deadline <= p_now
    ) THEN
        RETURN;
    END IF;
    front := -nextval('@schema@.positions');
    FOR r IN
        SELECT event_id, state FROM @schema@.deliveries
        WHERE topic = p_topic AND grp = p_grp AND state IN ('l', 'd') AND deadline <= p_now
        ORDER BY deadline, pos
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    LOOP
        rank := rank + 1;
        UPDATE @schema@.deliveries
        SET state = 'r', pos = front, sub = rank, token = NULL,
            suspect = suspect OR r.state = 'l'
        WHERE topic = p_topic AND grp = p_grp AND event_id = r.event_id;
    END LOOP;
END
$$;

CREATE FUNCTION @schema@.pass_key(
    p_topic text, p_grp text, p_key text, p_pos bigint, p_sub integer
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    left_ integer;
BEGIN
    -- Locks the lane: a publish of this key waits, or is waited for, so that the next
    -- statement (a fresh snapshot) sees every event of the key committed before.
    UPDATE @schema@.lanes SET live = live - 1
    WHERE topic = p_topic AND grp = p_grp AND key = p_key
    RETURNING live INTO left_;
    IF left_ IS NULL THEN
        RETURN false;
    END IF;
    IF left_ <= 0 THEN
        DELETE FROM @schema@.lanes WHERE topic = p_topic AND grp = p_grp AND key = p_key;
        RETURN false;
    END IF;
    UPDATE @schema@.deliveries d SET state = 'r', pos = p_pos, sub = p_sub
    WHERE d.topic = p_topic AND d.grp = p_grp AND d.event_id = (
        SELECT w.event_id FROM @schema@.deliveries w
        WHERE w.topic = p_topic AND w.grp = p_grp AND w.key = p_key AND w.state = 'w'
        ORDER BY w.key_seq, w.sub LIMIT 1
    );
    IF FOUND THEN
        PERFORM @schema@.wake(p_topic);
    END IF;
    RETURN FOUND;
END
$$;

CREATE FUNCTION @schema@.bury(
    p_topic text, p_grp text, p_id text, p_now double precision, p_reason text, p_error text
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lane text;
BEGIN
    UPDATE @schema@.deliveries
    SET state = 'x', reason = p_reason, error = coalesce(p_error, error), died_at = p_now,
        pos = nextval('@schema@.positions'), sub = 0, token = NULL, deadline = NULL
    WHERE topic = p_topic AND grp = p_grp AND event_id = p_id
    RETURNING key INTO lane;
    IF lane IS NOT NULL THEN
        PERFORM @schema@.pass_key(p_topic, p_grp, lane, nextval('@schema@.positions'), 0);
    END IF;
END
$$;

CREATE FUNCTION @schema@.drop_events(p_topic text, p_seqs bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s bigint;
BEGIN
    -- In sequence order, so that groups finishing the same events never deadlock; one
    -- row by its primary key at a time. The last holder deletes at once (one statement,
    -- and the only one for a topic of one group); the others count down.
    FOR s IN SELECT x FROM unnest(p_seqs) x ORDER BY x LOOP
        DELETE FROM @schema@.events WHERE topic = p_topic AND seq = s AND holders <= 1;
        IF NOT FOUND THEN
            UPDATE @schema@.events SET holders = holders - 1 WHERE topic = p_topic AND seq = s;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION @schema@.leased(
    p_topic text, p_grp text, p_id text, p_token text, p_now double precision
) RETURNS tid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r record;
BEGIN
    SELECT ctid, state, token, deadline INTO r FROM @schema@.deliveries
    WHERE topic = p_topic AND grp = p_grp AND event_id = p_id
    FOR UPDATE;
    IF FOUND AND r.state = 'l' AND r.token = p_token AND r.deadline > p_now THEN
        RETURN r.ctid;
    END IF;
    RETURN NULL;
END
$$;
