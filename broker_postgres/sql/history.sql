-- history: the helpers of retention and history (see migrate_2.sql for the tables).
--
-- A retained event is an events row with a position; the history holds it as one of
-- its holders, so a group finishing it leaves its body, and its id stays held (publish
-- skips it), while the history retains it.
--
-- covered(position, published_at, max_age, max_events, top, floor, now): whether the
--   topic's retention still covers a history entry. Every read of the history filters
--   with it, so what the trimming has yet to free is never read.
-- trim_history(topic, now, budget): free up to `budget` entries retention no longer
--   covers, the oldest first (retention only ever expires the oldest: a prefix). Run by
--   publish, claim and configure_topic themselves, a bounded batch each; rows locked by
--   others are skipped (SKIP LOCKED), never waited for.
-- enqueue(topic, group, ordered, seqs, ids, keys): events join the back of one group's
--   queue, in the order given; in an ordered group, a keyed event behind the live events
--   of its key, through its lane, exactly as a publish does.
-- copy_history(topic, group, ordered, history, now, count_only): the retained events
--   published at most `history` s ago that the group does not hold join the back of its
--   queue, oldest first; returns how many (with count_only: only counts). One INSERT ...
--   SELECT in the caller's transaction: a long history is copied at once, or not at all.
-- topic_lock(topic) / topic_share(topic): the transaction lock of a topic's set of
--   groups. Every publish shares it; a new subscription, an unsubscribe and a rewind take
--   it alone, so that a publish sees a group either in all its statements or in none,
--   and writes an event either into the history a copy reads or to the new group itself.

CREATE FUNCTION @schema@.covered(
    p_position bigint, p_published_at double precision, p_max_age double precision,
    p_max_events bigint, p_top bigint, p_floor bigint, p_now double precision
) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(
        p_position > p_floor
        AND (p_max_age IS NOT NULL OR p_max_events IS NOT NULL)
        AND (p_max_age IS NULL OR p_now < p_published_at + p_max_age)
        AND (p_max_events IS NULL OR p_position > p_top - p_max_events),
        false
    )
$$;

CREATE FUNCTION @schema@.topic_lock(p_topic text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(hashtext('@schema@'), hashtext(p_topic))
$$;

CREATE FUNCTION @schema@.topic_share(p_topic text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock_shared(hashtext('@schema@'), hashtext(p_topic))
$$;

CREATE FUNCTION @schema@.trim_history(p_topic text, p_now double precision, p_budget integer)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_age double precision;
    v_count bigint;
    v_top bigint;
    v_floor bigint;
    r record;
BEGIN
    SELECT max_age, max_events, position, floor INTO v_age, v_count, v_top, v_floor
    FROM @schema@.topics WHERE topic = p_topic;
    IF NOT FOUND THEN
        RETURN;  -- never configured: no history
    END IF;
    -- The usual case pays one index probe: the oldest entry is still covered (or none).
    SELECT position, published_at INTO r FROM @schema@.events
    WHERE topic = p_topic AND position IS NOT NULL
    ORDER BY position LIMIT 1;
    IF NOT FOUND
       OR @schema@.covered(r.position, r.published_at, v_age, v_count, v_top, v_floor, p_now) THEN
        RETURN;
    END IF;
    FOR r IN
        SELECT ctid AS tid, position, published_at, holders FROM @schema@.events
        WHERE topic = p_topic AND position IS NOT NULL
        ORDER BY position
        LIMIT p_budget
        FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN @schema@.covered(r.position, r.published_at, v_age, v_count, v_top, v_floor, p_now);
        IF r.holders <= 1 THEN
            DELETE FROM @schema@.events WHERE ctid = r.tid;
        ELSE
            UPDATE @schema@.events SET holders = holders - 1, position = NULL, published_at = NULL
            WHERE ctid = r.tid;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION @schema@.enqueue(
    p_topic text, p_grp text, p_ordered boolean, p_seqs bigint[], p_ids text[], p_keys text[]
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    -- One place at the back for the whole batch; sub orders the events within it (and,
    -- for those waiting behind their key, within the key: see pass_key).
    back bigint := nextval('@schema@.positions');
BEGIN
    INSERT INTO @schema@.deliveries (topic, grp, event_id, seq, state, pos, sub)
    SELECT p_topic, p_grp, a.id, a.seq, 'r'::"char", back, a.n::integer
    FROM unnest(p_seqs, p_ids, p_keys) WITH ORDINALITY a(seq, id, key, n)
    WHERE NOT p_ordered OR a.key IS NULL;
    IF NOT p_ordered THEN
        RETURN;
    END IF;
    WITH keyed AS (
        SELECT a.seq, a.id, a.key, a.n,
               row_number() OVER (PARTITION BY a.key ORDER BY a.n) AS rank
        FROM unnest(p_seqs, p_ids, p_keys) WITH ORDINALITY a(seq, id, key, n)
        WHERE a.key IS NOT NULL
    ), counts AS (
        SELECT key, count(*)::integer AS c FROM keyed GROUP BY key
    ), upserted AS (
        -- Sorted, so that lanes are locked in one order, as publish does.
        INSERT INTO @schema@.lanes AS l (topic, grp, key, live)
        SELECT p_topic, p_grp, key, c FROM counts ORDER BY key
        ON CONFLICT (topic, grp, key) DO UPDATE SET live = l.live + excluded.live
        RETURNING l.key, l.live
    )
    INSERT INTO @schema@.deliveries (topic, grp, event_id, seq, state, pos, sub, key, key_seq)
    SELECT p_topic, p_grp, k.id, k.seq,
           CASE WHEN l.live - c.c = 0 AND k.rank = 1 THEN 'r' ELSE 'w' END::"char",
           CASE WHEN l.live - c.c = 0 AND k.rank = 1 THEN back END,
           k.n::integer, k.key, back
    FROM keyed k JOIN counts c USING (key) JOIN upserted l USING (key);
END
$$;

CREATE FUNCTION @schema@.copy_history(
    p_topic text, p_grp text, p_ordered boolean, p_history double precision,
    p_now double precision, p_count_only boolean
) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_age double precision;
    v_count bigint;
    v_top bigint;
    v_floor bigint;
    seqs bigint[];
    ids text[];
    keys text[];
    n integer;
BEGIN
    SELECT max_age, max_events, position, floor INTO v_age, v_count, v_top, v_floor
    FROM @schema@.topics WHERE topic = p_topic;
    IF NOT FOUND OR (v_age IS NULL AND v_count IS NULL) THEN
        RETURN 0;
    END IF;
    IF p_count_only THEN
        SELECT count(*) INTO n FROM @schema@.events e
        WHERE e.topic = p_topic AND e.position IS NOT NULL
          AND e.published_at >= p_now - p_history
          AND @schema@.covered(e.position, e.published_at, v_age, v_count, v_top, v_floor, p_now)
          AND NOT EXISTS (
              SELECT 1 FROM @schema@.deliveries d
              WHERE d.topic = p_topic AND d.grp = p_grp AND d.event_id = e.event_id
          );
        RETURN n;
    END IF;
    WITH chosen AS (
        -- Locked in sequence order, as drop_events locks: no deadlock with settlements.
        SELECT e.seq FROM @schema@.events e
        WHERE e.topic = p_topic AND e.position IS NOT NULL
          AND e.published_at >= p_now - p_history
          AND @schema@.covered(e.position, e.published_at, v_age, v_count, v_top, v_floor, p_now)
          AND NOT EXISTS (
              SELECT 1 FROM @schema@.deliveries d
              WHERE d.topic = p_topic AND d.grp = p_grp AND d.event_id = e.event_id
          )
        ORDER BY e.seq
        FOR UPDATE OF e
    ), held AS (
        UPDATE @schema@.events e SET holders = e.holders + 1
        FROM chosen c WHERE e.topic = p_topic AND e.seq = c.seq
        RETURNING e.seq, e.event_id, e.key, e.position
    )
    SELECT array_agg(seq ORDER BY position), array_agg(event_id ORDER BY position),
           array_agg(key ORDER BY position)
    INTO seqs, ids, keys
    FROM held;
    IF seqs IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM @schema@.enqueue(p_topic, p_grp, p_ordered, seqs, ids, keys);
    PERFORM @schema@.wake(p_topic);
    RETURN cardinality(seqs);
END
$$;
