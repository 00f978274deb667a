-- Group commit and timers in the database.

-- One process at a time loads the coming waits into its timer (see queue/timers.rs).
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until BIGINT NOT NULL
);

-- The reconciler and the erasure path look effects up by contact and status.
CREATE INDEX effects_by_contact ON effects (contact_id) WHERE status IN ('pending', 'sending');
