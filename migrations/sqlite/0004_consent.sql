-- Per-channel consent: a contact may have said yes or no to marketing email and SMS.
CREATE TABLE contact_consent (
    contact_id BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    granted BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (contact_id, channel)
);
