-- The sales loop: a lead's life with its rep (accept, reject, recycle, outcome), the accept
-- deadline, the rep's notification, and the revenue of a won deal.
--
-- `status`: `assigned` (waiting for the rep to accept) and `accepted` hold a slot of the rep's
-- capacity (`rep_load`); `pooled` waits in the team's pool for a rep with room; `rejected`,
-- `recycled` (not accepted in time), `reassigned` (another team took the lead), `won` and
-- `lost` are closed.

-- When the lead goes back to the pool if the rep has not accepted it; set only while it waits
-- for that, so the deadline index holds only the leads that can still be recycled.
ALTER TABLE assignments ADD COLUMN accept_by BIGINT;
ALTER TABLE assignments ADD COLUMN accepted_at BIGINT;
ALTER TABLE assignments ADD COLUMN closed_at BIGINT;
-- Why the rep rejected or lost it, or why it was recycled.
ALTER TABLE assignments ADD COLUMN reason TEXT;
-- The rep the lead must not go to next (the one who let it go), for pooled leads.
ALTER TABLE assignments ADD COLUMN previous_rep TEXT;
-- A won deal's revenue, exact (ROI reports sum it).
ALTER TABLE assignments ADD COLUMN revenue NUMERIC(18, 2);
ALTER TABLE assignments ADD COLUMN currency TEXT;
-- The rep was told (email and/or webhook): NULL until then, so a crash before it is repaired.
ALTER TABLE assignments ADD COLUMN notified_at BIGINT;
ALTER TABLE assignments ADD COLUMN notify_attempts INTEGER NOT NULL DEFAULT 0;
-- A process telling the rep holds the notification until then, so two never both send it.
ALTER TABLE assignments ADD COLUMN notify_claimed_until BIGINT;
ALTER TABLE assignments ADD COLUMN notify_result TEXT;

-- Leads assigned before this migration were never notified; telling reps now would be noise.
UPDATE assignments SET notified_at = assigned_at;

CREATE INDEX assignments_accept_by ON assignments (accept_by) WHERE accept_by IS NOT NULL;
CREATE INDEX assignments_unnotified ON assignments (assigned_at) WHERE notified_at IS NULL;
CREATE INDEX assignments_by_contact ON assignments (contact_id, status);
CREATE INDEX assignments_by_rep ON assignments (rep, id);
CREATE INDEX assignments_pooled ON assignments (team, id) WHERE status = 'pooled';
