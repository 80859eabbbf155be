-- migrate_3: schema version 2 to 3: partitioned topics.
--
-- A topic's partition count (configure_topic(partitions=)) is only stored: one queue per
-- group keeps the order of every partition (invariant 12), so nothing else changes. A
-- column with a constant default only changes the catalog, however many topics there are.

ALTER TABLE @schema@.topics ADD COLUMN partitions integer NOT NULL DEFAULT 1;
