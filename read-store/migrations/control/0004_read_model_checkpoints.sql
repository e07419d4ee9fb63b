-- The last applied offset of every (topic, partition) per read model, written in the same
-- transaction as that read model's rows. `schema_name` is where the rows are: a version's
-- schema (`rm_v1`), or the staging schema of a rebuild of one read model (`rm_v1_rebuild`),
-- whose rows move to the version's schema when the rebuilt tables are switched in.
--
-- `projection.checkpoints` stays the version's position in the log: the lowest offset every
-- one of its read models has applied (what a consumer seeks past, what read-your-writes
-- waits for), with the dead-letter count.
CREATE TABLE projection.read_model_checkpoints (
    schema_name text        NOT NULL,
    read_model  text        NOT NULL CHECK (read_model ~ '^[a-z][a-z0-9_]*$'),
    topic       text        NOT NULL,
    "partition" integer     NOT NULL CHECK ("partition" >= 0),
    "offset"    bigint      NOT NULL CHECK ("offset" >= -1),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, read_model, topic, "partition")
);

-- Versions built before this migration: every read model of that time has applied what its
-- version had. A read model added later starts at the beginning of the log.
INSERT INTO projection.read_model_checkpoints (schema_name, read_model, topic, "partition", "offset")
SELECT v.schema_name, m.read_model, c.topic, c."partition", c."offset"
  FROM projection.checkpoints c
  JOIN projection.projection_versions v USING (projection, version)
 CROSS JOIN unnest(ARRAY['customers', 'contacts', 'touchpoint_stats', 'timeline', 'audit_trail',
                         'pipeline', 'stage_alerts', 'orders', 'rfm', 'complaints',
                         'service_requests', 'churn', 'teams']) AS m(read_model);
