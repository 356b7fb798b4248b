-- How far each gateway journal segment has been shipped, updated in the same transaction as
-- the rollups it added to: a batch is counted exactly when its offset moves. `complete = 1`:
-- the segment was read to its end and its orphans recorded; the file may be deleted.
CREATE TABLE journal_offsets (
    segment TEXT PRIMARY KEY,
    shipped_to BIGINT NOT NULL,
    complete BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
