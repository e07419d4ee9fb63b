-- The projection-service's control tables, in schema `projection` (created before this runs).
--
-- Each read-model projection is built into a PostgreSQL schema of its own per version
-- (`rm_v1`, `rm_v2`, ...). A replay builds a new version while the live one keeps serving;
-- switching is one transaction on `projection_versions`.

CREATE TABLE projection.projection_versions (
    projection  text        NOT NULL CHECK (projection ~ '^[a-z][a-z0-9_]*$'),
    version     integer     NOT NULL CHECK (version > 0),
    schema_name text        NOT NULL UNIQUE,
    -- building: being filled (not served); live: served; retired: superseded, may be dropped
    status      text        NOT NULL CHECK (status IN ('building', 'live', 'retired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    live_since  timestamptz,
    retired_at  timestamptz,
    PRIMARY KEY (projection, version)
);

-- At most one live version per projection.
CREATE UNIQUE INDEX projection_versions_one_live
    ON projection.projection_versions (projection) WHERE status = 'live';

-- The last applied offset of every (topic, partition) of a projection version, written in the
-- same transaction as the read-model rows it covers. A consumer seeks to "offset" + 1.
CREATE TABLE projection.checkpoints (
    projection  text        NOT NULL,
    version     integer     NOT NULL,
    topic       text        NOT NULL,
    "partition" integer     NOT NULL CHECK ("partition" >= 0),
    "offset"    bigint      NOT NULL CHECK ("offset" >= -1),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, version, topic, "partition"),
    FOREIGN KEY (projection, version)
        REFERENCES projection.projection_versions (projection, version) ON DELETE CASCADE
);
