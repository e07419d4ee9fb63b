-- The records a version dead-lettered, per partition, counted in the same transaction that
-- moves the checkpoint past them: exactly once, and kept across restarts.
ALTER TABLE projection.checkpoints ADD COLUMN dead_letters bigint NOT NULL DEFAULT 0
    CHECK (dead_letters >= 0);
