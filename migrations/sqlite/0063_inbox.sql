-- Requests of the events API stored as they came, answered, then applied (engine/inbox.rs).
-- Applying a row deletes it in the same transaction, so each is applied once; `part` maps the
-- ids a multi-row insert returns back to its requests.
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    part INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_at INTEGER,
    last_error TEXT
);
