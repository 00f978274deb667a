-- Lead scoring: every point a contact earned or lost, so the score can be explained and
-- decayed lazily (from the entries' ages, when it is read).
CREATE TABLE score_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    rule TEXT NOT NULL,
    event_id BIGINT,
    points BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX score_entries_by_contact ON score_entries (contact_id, rule, at);
