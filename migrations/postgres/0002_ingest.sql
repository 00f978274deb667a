-- Identity resolution and the Segment-compatible event log.

-- Every identifier a contact is known by: user_id, anonymous_id, email, phone.
CREATE TABLE identities (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    contact_id BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX identities_by_contact ON identities (contact_id);

-- Replays of a message (same source and messageId) are no-ops.
CREATE TABLE received_messages (
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (source, message_id)
);

ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'track';
ALTER TABLE events ADD COLUMN message_id TEXT;
ALTER TABLE events ADD COLUMN context TEXT;
ALTER TABLE events ADD COLUMN original_timestamp BIGINT;
ALTER TABLE events ADD COLUMN sent_at BIGINT;
ALTER TABLE events ADD COLUMN received_at BIGINT;

-- Two contacts found to be one person: the audit trail.
CREATE TABLE contact_merges (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    survivor_id BIGINT NOT NULL,
    merged_id BIGINT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL
);
