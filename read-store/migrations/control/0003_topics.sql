-- The topics the projections read and their partition counts, as the projection found them
-- when it started: query-service answers a `CRM-Min-Position` on an unknown topic or partition
-- with 400 at once instead of waiting for a position that can never be reached.
CREATE TABLE projection.topics (
    topic      text        PRIMARY KEY,
    partitions integer     NOT NULL CHECK (partitions > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
