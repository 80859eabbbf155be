-- migrate_2: schema version 1 to 2: retention and history.
--
-- A topic with retention keeps its published events as history (events rows whose
-- position is set), readable by new groups and rewinds after every group is done.
-- Adding nullable columns without a default only changes the catalog: it is quick on a
-- large events table, and every row of version 1 is simply in no history.
--
-- topics: a topic's retention (both NULL: none), the position counter of its history
-- (never reset) and its floor: the positions at or below it are no history any more
-- (a configure_topic moves it past what the old retention no longer covered), so that
-- nothing the trimming has yet to free is ever read again.

ALTER TABLE @schema@.events
    ADD COLUMN position bigint,              -- its place in the topic's history, if retained
    ADD COLUMN published_at double precision;  -- when it joined the history

CREATE INDEX events_history ON @schema@.events (topic, position) WHERE position IS NOT NULL;

CREATE TABLE @schema@.topics (
    topic text PRIMARY KEY,
    max_age double precision,
    max_events bigint,
    position bigint NOT NULL DEFAULT 0,
    floor bigint NOT NULL DEFAULT 0
);
