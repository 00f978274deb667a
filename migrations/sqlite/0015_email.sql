-- Email feedback: the key that signs links, and addresses mail is never sent to.

-- Secrets the server generates once and keeps: `links` signs unsubscribe, click and open links
-- when NURTURE_SECRET is not set, so every process (and every restart) signs alike.
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- An address that hard-bounced or whose owner complained: no journey mails it again until an
-- admin lifts the suppression (the row stays, with `lifted_at`, as the record).
CREATE TABLE suppressions (
    channel TEXT NOT NULL,
    address TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    lifted_at BIGINT,
    lifted_by TEXT,
    PRIMARY KEY (channel, address)
);

-- A link in an old email names the contact it was sent to; after a merge, the survivor.
CREATE INDEX contact_merges_by_merged ON contact_merges (merged_id);
