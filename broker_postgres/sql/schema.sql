-- schema: the tables of schema version 1 (run once, by the migration of version 0 to 1).
--
-- An event is stored once per topic (events), with a sequence number from one sequence
-- (positions) that gives publish order; each subscribed group holds a delivery row per
-- event it has not finished (deliveries). events.holders counts the groups not done
-- with the event, and (from version 2, migrate_2.sql) the topic's history while it
-- retains the event; the last holder to let go deletes the row.
--
-- deliveries.state: 'r' READY, 'w' READY but waiting behind an earlier event of its key
-- (ordered groups), 'l' LEASED, 'd' DELAYED, 'x' DEAD. READY order is (pos, sub):
-- first deliveries and replays take positions from the sequence (the back), redeliveries
-- its negated values (the front); sub orders the events one statement placed together.
-- deadline is the lease deadline while 'l' and the due time while 'd', in seconds on
-- the transport's clock (the server's clock_timestamp() unless a test injects one).

CREATE SEQUENCE @schema@.positions;

CREATE TABLE @schema@.subscriptions (
    topic text NOT NULL,
    grp text NOT NULL,
    ordered boolean NOT NULL,
    PRIMARY KEY (topic, grp)
);

CREATE TABLE @schema@.events (
    topic text NOT NULL,
    seq bigint NOT NULL DEFAULT nextval('@schema@.positions'),
    event_id text NOT NULL,
    body bytea NOT NULL,
    key text,
    holders integer NOT NULL,  -- groups not done with it (DONE, or DEAD and purged)
    PRIMARY KEY (topic, seq),
    UNIQUE (topic, event_id)
);

CREATE TABLE @schema@.deliveries (
    topic text NOT NULL,
    grp text NOT NULL,
    event_id text NOT NULL,
    seq bigint NOT NULL,
    state "char" NOT NULL,
    pos bigint,
    sub integer NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    token text,
    deadline double precision,
    suspect boolean NOT NULL DEFAULT false,
    key text,        -- ordered groups only: the event's ordering key
    key_seq bigint,  -- ordered groups only: its place in its key's history
    error text,
    reason text,
    died_at double precision,
    PRIMARY KEY (topic, grp, event_id)
);
-- Rows are deleted as soon as they are DONE: leave room for updates on the same page.
ALTER TABLE @schema@.deliveries SET (fillfactor = 80);

CREATE INDEX deliveries_ready ON @schema@.deliveries (topic, grp, pos, sub) WHERE state = 'r';
CREATE INDEX deliveries_due ON @schema@.deliveries (topic, grp, deadline) WHERE state IN ('l', 'd');
CREATE INDEX deliveries_dead ON @schema@.deliveries (topic, grp, pos, sub) WHERE state = 'x';
CREATE INDEX deliveries_lanes ON @schema@.deliveries (topic, grp, key, key_seq) WHERE state = 'w';

-- Ordered groups: per key, how many of its events are neither DONE nor DEAD. The row is
-- also the lock that orders publishes and settlements of one key.
CREATE TABLE @schema@.lanes (
    topic text NOT NULL,
    grp text NOT NULL,
    key text NOT NULL,
    live integer NOT NULL,
    PRIMARY KEY (topic, grp, key)
);

-- Dedup windows: the end of the window of each id published with one.
CREATE TABLE @schema@.dedup (
    topic text NOT NULL,
    event_id text NOT NULL,
    ends double precision NOT NULL,
    PRIMARY KEY (topic, event_id)
);
CREATE INDEX dedup_ends ON @schema@.dedup (topic, ends);
