-- observe: the read-only queries: stats, poll, dead_letters. None of them writes, so
-- they take no lock and may run on a replica's worth of load without slowing claims.
--
-- stats(topic, group, now): READY, LEASED, DELAYED, DEAD counts at `now`, expired
--   leases and due retries counted as READY (as a claim would find them), events
--   waiting behind their key too; and `now` itself.
-- poll(group, topics, now): whether a claim would find work, the seconds until the
--   earliest lease deadline or due retry (NULL: none), and `now`.
-- dead_letters(topic, group, limit, offset): oldest death first, the `offset` oldest
--   skipped.
-- topic_stats(topic, now): the retention, how many events the history retains at `now`,
--   when the oldest of them was published, and the partition count; no row for a topic
--   never configured.

CREATE FUNCTION @schema@.stats(p_topic text, p_grp text, p_now double precision)
RETURNS TABLE (o_ready bigint, o_leased bigint, o_delayed bigint, o_dead bigint)
LANGUAGE sql VOLATILE AS $$
    WITH t AS (SELECT @schema@.now_of(p_now) AS now_)
    SELECT
        count(*) FILTER (WHERE state IN ('r', 'w') OR (state IN ('l', 'd') AND deadline <= t.now_)),
        count(*) FILTER (WHERE state = 'l' AND deadline > t.now_),
        count(*) FILTER (WHERE state = 'd' AND deadline > t.now_),
        count(*) FILTER (WHERE state = 'x')
    FROM @schema@.deliveries, t
    WHERE topic = p_topic AND grp = p_grp
$$;

CREATE FUNCTION @schema@.poll(p_grp text, p_topics text[], p_now double precision)
RETURNS TABLE (o_work boolean, o_next_due double precision)
LANGUAGE sql VOLATILE AS $$
    WITH t AS (SELECT @schema@.now_of(p_now) AS now_)
    SELECT
        EXISTS (
            SELECT 1 FROM @schema@.deliveries
            WHERE grp = p_grp AND topic = ANY (p_topics) AND state = 'r'
        ) OR EXISTS (
            SELECT 1 FROM @schema@.deliveries, t
            WHERE grp = p_grp AND topic = ANY (p_topics) AND state IN ('l', 'd')
              AND deadline <= t.now_
        ),
        (
            SELECT min(deadline) FROM @schema@.deliveries
            WHERE grp = p_grp AND topic = ANY (p_topics) AND state IN ('l', 'd')
        ) - (SELECT now_ FROM t)
$$;

CREATE FUNCTION @schema@.dead_letters(
    p_topic text, p_grp text, p_limit integer, p_offset integer
)
RETURNS TABLE (
    o_id text, o_body bytea, o_reason text, o_error text, o_attempts integer,
    o_died_at double precision
)
LANGUAGE sql STABLE AS $$
    SELECT d.event_id, coalesce(e.body, ''::bytea), d.reason, d.error, d.attempts, d.died_at
    FROM @schema@.deliveries d
    LEFT JOIN @schema@.events e ON e.topic = d.topic AND e.seq = d.seq
    WHERE d.topic = p_topic AND d.grp = p_grp AND d.state = 'x'
    ORDER BY d.pos, d.sub
    LIMIT greatest(p_limit, 0) OFFSET greatest(p_offset, 0)
$$;

CREATE FUNCTION @schema@.topic_stats(p_topic text, p_now double precision)
RETURNS TABLE (
    o_max_age double precision, o_max_events bigint, o_retained bigint,
    o_oldest_at double precision, o_now double precision, o_partitions integer
)
LANGUAGE sql VOLATILE AS $$
    WITH t AS (
        SELECT x.*, @schema@.now_of(p_now) AS now_ FROM @schema@.topics x WHERE x.topic = p_topic
    ), h AS (
        SELECT e.position, e.published_at FROM @schema@.events e, t
        WHERE e.topic = p_topic AND e.position IS NOT NULL
          AND @schema@.covered(
              e.position, e.published_at, t.max_age, t.max_events, t.position, t.floor, t.now_
          )
    )
    SELECT t.max_age, t.max_events, (SELECT count(*) FROM h),
           (SELECT h.published_at FROM h ORDER BY h.position LIMIT 1), t.now_, t.partitions
    FROM t
$$;
