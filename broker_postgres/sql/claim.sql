-- claim: lease up to p_max READY events of one group from its topics, in their order.
--
-- Arguments: group, topics, max count, lease (seconds), max attempts, token prefix
-- (random, unique to this call), now (NULL = the server's clock).
-- Returns: per event, in claim order: topic, id, token, attempt, isolated, key, body and
-- the lease deadline.
--
-- Per topic, expired leases and due retries go back to the front first (reap). Events
-- are taken from the front in batches, each row locked FOR UPDATE SKIP LOCKED, so
-- concurrent claims of one group take different events and never wait for each other.
-- Each claimed event's attempt count goes up in this same transaction; one that would
-- exceed max attempts goes to DEAD ("max_attempts") instead, at most 1000 per call. A
-- suspect (its last lease expired) is handed out alone, as the first event of the
-- call; a call that already took events stops before it. Each topic's history is
-- trimmed a bounded batch (64) per call, so that it ages out without publishes.

CREATE FUNCTION @schema@.claim(
    p_grp text, p_topics text[], p_max integer, p_lease double precision,
    p_max_attempts integer, p_token text, p_now double precision
) RETURNS TABLE (
    o_topic text, o_id text, o_token text, o_attempt integer, o_isolated boolean,
    o_key text, o_body bytea, o_deadline double precision
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ double precision := @schema@.now_of(p_now);
    deadline_ double precision;
    claimed integer := 0;
    buried integer := 0;
    ending boolean := false;
    t text;
    r record;
    tids tid[];
    isolated_id text;
    seen integer;
    want integer;
BEGIN
    deadline_ := now_ + p_lease;
    FOREACH t IN ARRAY p_topics LOOP
        EXIT WHEN claimed >= p_max OR ending;
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM @schema@.subscriptions WHERE topic = t AND grp = p_grp
        );
        PERFORM @schema@.reap(t, p_grp, now_);
        PERFORM @schema@.trim_history(t, now_, 64);  -- a quiet topic's history ages out too
        LOOP
            want := least(p_max - claimed, 1000 - buried);
            EXIT WHEN want <= 0 OR ending;
            seen := 0;
            tids := '{}';
            FOR r IN
                SELECT d.ctid AS tid, d.event_id, d.attempts, d.suspect FROM @schema@.deliveries d
                WHERE d.topic = t AND d.grp = p_grp AND d.state = 'r'
                ORDER BY d.pos, d.sub
                LIMIT want
                FOR UPDATE SKIP LOCKED
            LOOP
                seen := seen + 1;
                IF r.attempts >= p_max_attempts THEN
                    PERFORM @schema@.bury(t, p_grp, r.event_id, now_, 'max_attempts', NULL);
                    buried := buried + 1;
                    CONTINUE;
                END IF;
                IF r.suspect AND claimed + cardinality(tids) > 0 THEN
                    ending := true;
                    EXIT;
                END IF;
                tids := tids || r.tid;
                IF r.suspect THEN
                    isolated_id := r.event_id;
                    ending := true;
                    EXIT;
                END IF;
            END LOOP;
            IF cardinality(tids) > 0 THEN
                -- The rows this call locked, by ctid (a TID scan), and each body by its
                -- primary key: plans no statistics can spoil (see common.sql).
                RETURN QUERY
                WITH leased AS (
                    UPDATE @schema@.deliveries d
                    SET state = 'l', attempts = d.attempts + 1, deadline = deadline_,
                        token = p_token || '.' || (claimed + array_position(tids, d.ctid))
                    WHERE d.ctid = ANY (tids)
                    RETURNING d.event_id, d.seq, d.token, d.attempts
                )
                SELECT t, l.event_id, l.token, l.attempts,
                       l.event_id IS NOT DISTINCT FROM isolated_id, e.key,
                       coalesce(e.body, ''::bytea), deadline_
                FROM leased l
                LEFT JOIN LATERAL (
                    SELECT x.key, x.body FROM @schema@.events x
                    WHERE x.topic = t AND x.seq = l.seq
                    OFFSET 0
                ) e ON true
                ORDER BY split_part(l.token, '.', 2)::integer;
                claimed := claimed + cardinality(tids);
            END IF;
            -- A batch short of what was asked emptied the queue, unless a burial let
            -- the next event of its key join the back.
            EXIT WHEN seen = 0 OR (seen < want AND buried = 0);
        END LOOP;
    END LOOP;
END
$$;
