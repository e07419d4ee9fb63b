-- Orders mark RFM stale by bumping a counter of their partition: batches of different
-- partitions commit at the same time and must not queue on one row. The orders' version is
-- the sum of the counters; the single counter of before is carried over as partition -1.
CREATE TABLE rfm_order_versions (
    "partition"    integer PRIMARY KEY CHECK ("partition" >= -1),
    orders_version bigint  NOT NULL CHECK (orders_version >= 0)
);
INSERT INTO rfm_order_versions ("partition", orders_version)
SELECT -1, orders_version FROM rfm_state;
DROP TABLE rfm_state;
