-- Journey controls (engine/controls.rs): a paused journey enrolls nobody, and its contacts in
-- flight hold before their next step until it is resumed. A row here is the pause, so it
-- survives restarts and every process sees it.
CREATE TABLE journey_pauses (
    journey_id TEXT PRIMARY KEY,
    paused_at BIGINT NOT NULL,
    -- Who paused it (`api` or `cli`), for the operator reading the counts.
    paused_by TEXT NOT NULL
);
