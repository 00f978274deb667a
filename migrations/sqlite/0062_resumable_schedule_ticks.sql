-- A schedule tick's audience is enrolled a page of contacts at a time, each page in one
-- transaction with its progress: the last contact id looked at (`audience_cursor`) and the
-- claimer's lease, renewed with every page. A tick whose claimer died mid-audience (its lease
-- ran out, `done_at` still NULL) is claimed again by another process and resumed after the
-- cursor, so every contact of the audience is looked at once.
ALTER TABLE schedule_ticks ADD COLUMN audience_cursor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE schedule_ticks ADD COLUMN lease_until BIGINT;
ALTER TABLE schedule_ticks ADD COLUMN done_at BIGINT;
-- Ticks claimed before this release: their progress was not kept, so they count as done.
UPDATE schedule_ticks SET done_at = claimed_at;
CREATE INDEX schedule_ticks_unfinished ON schedule_ticks (lease_until) WHERE done_at IS NULL;
