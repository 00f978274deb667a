-- The engine's state. Times are milliseconds since the Unix epoch (BIGINT) so the same code
-- reads PostgreSQL and SQLite.

CREATE TABLE journey_versions (
    journey_id TEXT NOT NULL,
    version TEXT NOT NULL,
    file TEXT NOT NULL,
    source TEXT NOT NULL,
    loaded_at BIGINT NOT NULL,
    PRIMARY KEY (journey_id, version)
);

CREATE TABLE contacts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id TEXT UNIQUE,
    email TEXT,
    phone TEXT,
    stage TEXT NOT NULL DEFAULT 'lead',
    score BIGINT NOT NULL DEFAULT 0,
    timezone TEXT,
    language TEXT,
    owner TEXT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT
);
CREATE INDEX contacts_email ON contacts (email);

CREATE TABLE contact_traits (
    contact_id BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (contact_id, name)
);

CREATE TABLE contact_tags (
    contact_id BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (contact_id, tag)
);

CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    properties TEXT NOT NULL,
    occurred_at BIGINT NOT NULL
);
CREATE INDEX events_by_contact ON events (contact_id, name, occurred_at);

CREATE TABLE enrollments (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    journey_id TEXT NOT NULL,
    version TEXT NOT NULL,
    enrollment_key TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    position TEXT NOT NULL,
    step TEXT,
    seq BIGINT NOT NULL DEFAULT 0,
    due_at BIGINT,
    trigger_event TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    entered_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- At most one unfinished enrollment per contact, journey and key.
CREATE UNIQUE INDEX enrollments_one_open ON enrollments (contact_id, journey_id, enrollment_key)
    WHERE status IN ('active', 'waiting', 'failed');
CREATE INDEX enrollments_due ON enrollments (due_at) WHERE status IN ('active', 'waiting');
CREATE INDEX enrollments_by_contact ON enrollments (contact_id, journey_id);

CREATE TABLE waiters (
    enrollment_id BIGINT PRIMARY KEY REFERENCES enrollments (id) ON DELETE CASCADE,
    contact_id BIGINT NOT NULL,
    event_name TEXT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX waiters_by_event ON waiters (contact_id, event_name);

CREATE TABLE step_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enrollment_id BIGINT NOT NULL REFERENCES enrollments (id) ON DELETE CASCADE,
    journey_id TEXT NOT NULL,
    version TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX step_history_by_enrollment ON step_history (enrollment_id, id);

CREATE TABLE effects (
    effect_key TEXT PRIMARY KEY,
    enrollment_id BIGINT NOT NULL REFERENCES enrollments (id) ON DELETE CASCADE,
    contact_id BIGINT NOT NULL,
    journey_id TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    -- While `sending`, the worker performing it holds a lease until `claimed_until`.
    claimed_until BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    done_at BIGINT
);
CREATE INDEX effects_pending ON effects (enrollment_id) WHERE status IN ('pending', 'sending');
CREATE INDEX effects_messages ON effects (contact_id, done_at) WHERE status = 'done';

CREATE TABLE conversions (
    enrollment_id BIGINT PRIMARY KEY REFERENCES enrollments (id) ON DELETE CASCADE,
    contact_id BIGINT NOT NULL,
    journey_id TEXT NOT NULL,
    version TEXT NOT NULL,
    event_name TEXT NOT NULL,
    revenue DOUBLE PRECISION,
    at BIGINT NOT NULL
);

CREATE TABLE assignments (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    enrollment_id BIGINT,
    team TEXT NOT NULL,
    rep TEXT NOT NULL,
    status TEXT NOT NULL,
    assigned_at BIGINT NOT NULL
);
CREATE INDEX assignments_open ON assignments (team, rep) WHERE status = 'assigned';

CREATE TABLE schedule_ticks (
    journey_id TEXT NOT NULL,
    tick BIGINT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    enrolled BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (journey_id, tick)
);
