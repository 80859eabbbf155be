-- publish: append events, in order, to the READY queue of every group of a topic.
--
-- Arguments: topic, ids, bodies, keys (NULL for no key; the array may be NULL), the
-- dedup window (seconds, 0 = none), now (NULL = the server's clock).
-- Returns: the number of copies enqueued (events not skipped times the groups).
--
-- The body is stored once (events) with a count of its holders: the groups, and the
-- history while the topic retains it. An event is skipped when the topic still holds
-- its id (the unique key of events), or when its id was published less than its dedup
-- window ago; a skipped duplicate does not extend the window. An id held only by a
-- history entry retention no longer covers is freed at once (the trimming may not have
-- reached it yet), counting what the call appended before it. Ended windows are forgotten a bounded number per call, at least as
-- many as the call can add; expired history entries likewise (trim_history). In an
-- ordered group a keyed event is claimable at once only if its key has no event neither
-- DONE nor DEAD; otherwise it waits ('w'). One NOTIFY per call, however many events and
-- groups. Runs in the caller's transaction when called on the caller's connection
-- (transactional publish).
--
-- Every publish shares the topic's lock (history.sql), so that the groups it reads are
-- the groups it writes to. A topic with retention is written by one publish at a time
-- (its topics row is locked): positions in its history follow the order of commits, and
-- so do publish times.

CREATE FUNCTION @schema@.publish(
    p_topic text, p_ids text[], p_bodies bytea[], p_keys text[], p_window double precision,
    p_now double precision
) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n integer;
    any_ordered boolean;
    now_ double precision;
    added_seqs bigint[];
    added_ids text[];
    added_keys text[];
    g record;
    retains boolean;
    has_log boolean;
    one_by_one boolean := false;
    v_age double precision;
    v_count bigint;
    v_floor bigint;
    top bigint;
    newest bigint;
    r record;
    v_seq bigint;
    ix integer;
BEGIN
    IF cardinality(p_ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM @schema@.topic_share(p_topic);
    SELECT position, max_age, max_events, floor INTO top, v_age, v_count, v_floor
    FROM @schema@.topics
    WHERE topic = p_topic AND (max_age IS NOT NULL OR max_events IS NOT NULL)
    FOR UPDATE;
    retains := FOUND;
    SELECT count(*), coalesce(bool_or(ordered), false) INTO n, any_ordered
    FROM @schema@.subscriptions WHERE topic = p_topic;
    IF n = 0 AND NOT retains THEN
        RETURN 0;
    END IF;
    now_ := @schema@.now_of(p_now);
    has_log := retains OR EXISTS (
        SELECT 1 FROM @schema@.events WHERE topic = p_topic AND position IS NOT NULL
    );
    IF has_log THEN
        -- An id only the history holds is held while retention covers its entry, and
        -- each event this call appends pushes the oldest out of max_events: whether a
        -- later event of the call is new depends on the earlier ones. Such a call (an
        -- outbox re-sending ids every group is done with) goes event by event.
        one_by_one := EXISTS (
            SELECT 1 FROM @schema@.events
            WHERE topic = p_topic AND event_id = ANY (p_ids) AND holders = 1
              AND position IS NOT NULL
        ) OR (
            -- So may an id repeated in a call that appends more than max_events.
            coalesce(cardinality(p_ids) > v_count, false)
            AND (SELECT count(DISTINCT x) FROM unnest(p_ids) x) < cardinality(p_ids)
        );
    END IF;
    -- A topic without ended windows (the usual case) pays one index probe, no delete.
    IF EXISTS (SELECT 1 FROM @schema@.dedup WHERE topic = p_topic AND ends <= now_) THEN
        DELETE FROM @schema@.dedup d
        USING (
            SELECT event_id FROM @schema@.dedup
            WHERE topic = p_topic AND ends <= now_
            ORDER BY ends LIMIT 2 * cardinality(p_ids) + 16
        ) ended
        WHERE d.topic = p_topic AND d.event_id = ended.event_id;
    END IF;

    IF one_by_one THEN
        added_seqs := '{}';
        added_ids := '{}';
        added_keys := '{}';
        FOR ix IN 1 .. cardinality(p_ids) LOOP
            SELECT ctid AS tid, holders, position, published_at INTO r FROM @schema@.events
            WHERE topic = p_topic AND event_id = p_ids[ix]
            FOR UPDATE;
            IF FOUND THEN
                -- Held, unless only by an entry retention no longer covers (the
                -- trimming may not have reached it): that one is freed at once.
                CONTINUE WHEN r.holders <> 1 OR r.position IS NULL OR @schema@.covered(
                    r.position, r.published_at, v_age, v_count, top, v_floor, now_
                );
                DELETE FROM @schema@.events WHERE ctid = r.tid;
            END IF;
            CONTINUE WHEN EXISTS (
                SELECT 1 FROM @schema@.dedup d
                WHERE d.topic = p_topic AND d.event_id = p_ids[ix] AND d.ends > now_
            );
            INSERT INTO @schema@.events (topic, event_id, body, key, holders, position, published_at)
            VALUES (
                p_topic, p_ids[ix], p_bodies[ix], p_keys[ix], n + retains::integer,
                CASE WHEN retains THEN top + 1 END, CASE WHEN retains THEN now_ END
            )
            RETURNING seq INTO v_seq;
            added_seqs := added_seqs || v_seq;
            added_ids := added_ids || p_ids[ix];
            added_keys := added_keys || p_keys[ix];
            IF retains THEN
                top := top + 1;
                newest := top;
            END IF;
        END LOOP;
        IF cardinality(added_seqs) = 0 THEN
            added_seqs := NULL;
        END IF;
    ELSE
        WITH input AS (
            SELECT u.id, u.body, u.key, u.ord
            FROM unnest(p_ids, p_bodies, coalesce(p_keys, array_fill(NULL::text, ARRAY[cardinality(p_ids)])))
                WITH ORDINALITY AS u(id, body, key, ord)
        ), firsts AS (
            SELECT DISTINCT ON (id) id, body, key, ord FROM input ORDER BY id, ord
        ), inserted AS (
            -- Sorted, so that sequence numbers follow the order of the call.
            -- With retention, the history holds it too, at the next positions: ids the
            -- topic holds are left out first, so that positions have no gaps (publishes
            -- of this topic wait for each other, see above).
            INSERT INTO @schema@.events (topic, event_id, body, key, holders, position, published_at)
            SELECT p_topic, f.id, f.body, f.key, n + retains::integer,
                   CASE WHEN retains THEN top + row_number() OVER (ORDER BY f.ord) END,
                   CASE WHEN retains THEN now_ END
            FROM firsts f
            -- A subquery per event (a key lookup), never a join over the whole record.
            WHERE coalesce(
                (SELECT d.ends FROM @schema@.dedup d WHERE d.topic = p_topic AND d.event_id = f.id),
                '-infinity'
            ) <= now_
              AND (NOT retains OR NOT EXISTS (
                  SELECT 1 FROM @schema@.events x WHERE x.topic = p_topic AND x.event_id = f.id
              ))
            ORDER BY f.ord
            ON CONFLICT (topic, event_id) DO NOTHING
            RETURNING seq, event_id, key, position
        )
        SELECT array_agg(seq ORDER BY seq), array_agg(event_id ORDER BY seq),
               array_agg(key ORDER BY seq), max(position)
        INTO added_seqs, added_ids, added_keys, newest
        FROM inserted;
    END IF;
    IF newest IS NOT NULL THEN
        UPDATE @schema@.topics SET position = newest WHERE topic = p_topic;
    END IF;
    IF has_log THEN
        -- After the append, so that what it pushed out of max_events goes now.
        PERFORM @schema@.trim_history(p_topic, now_, cardinality(p_ids) + 64);
    END IF;
    IF added_seqs IS NULL THEN
        RETURN 0;
    END IF;

    IF p_window > 0 THEN
        INSERT INTO @schema@.dedup (topic, event_id, ends)
        SELECT p_topic, i, now_ + p_window FROM unnest(added_ids) i
        ON CONFLICT (topic, event_id) DO UPDATE SET ends = excluded.ends;
    END IF;

    INSERT INTO @schema@.deliveries (topic, grp, event_id, seq, state, pos)
    SELECT p_topic, s.grp, a.id, a.seq, 'r'::"char", a.seq
    FROM @schema@.subscriptions s, unnest(added_seqs, added_ids, added_keys) a(seq, id, key)
    WHERE s.topic = p_topic AND (NOT s.ordered OR a.key IS NULL);

    FOR g IN
        SELECT grp FROM @schema@.subscriptions
        WHERE topic = p_topic AND ordered AND any_ordered AND p_keys IS NOT NULL
        ORDER BY grp
    LOOP
        WITH keyed AS (
            SELECT a.seq, a.id, a.key,
                   row_number() OVER (PARTITION BY a.key ORDER BY a.seq) AS rank
            FROM unnest(added_seqs, added_ids, added_keys) a(seq, id, key)
            WHERE a.key IS NOT NULL
        ), counts AS (
            SELECT key, count(*)::integer AS c FROM keyed GROUP BY key
        ), upserted AS (
            -- Sorted, so that publishes of several keys lock their lanes in one order.
            INSERT INTO @schema@.lanes AS l (topic, grp, key, live)
            SELECT p_topic, g.grp, key, c FROM counts ORDER BY key
            ON CONFLICT (topic, grp, key) DO UPDATE SET live = l.live + excluded.live
            RETURNING l.key, l.live
        )
        INSERT INTO @schema@.deliveries (topic, grp, event_id, seq, state, pos, key, key_seq)
        SELECT p_topic, g.grp, k.id, k.seq,
               CASE WHEN l.live - c.c = 0 AND k.rank = 1 THEN 'r' ELSE 'w' END::"char",
               CASE WHEN l.live - c.c = 0 AND k.rank = 1 THEN k.seq END,
               k.key, k.seq
        FROM keyed k JOIN counts c USING (key) JOIN upserted l USING (key);
    END LOOP;

    IF n > 0 THEN
        PERFORM @schema@.wake(p_topic);
    END IF;
    RETURN cardinality(added_seqs) * n;
END
$$;
