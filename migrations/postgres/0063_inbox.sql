-- Requests of the events API stored as they came, answered, then applied (engine/inbox.rs).
-- Applying a row deletes it in the same transaction, so each is applied once; `part` maps the
-- ids a multi-row insert returns back to its requests. The body is stored uncompressed:
-- compressing a batch's JSON cost more than writing it.
CREATE TABLE inbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    part BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    retry_at BIGINT,
    last_error TEXT
);
ALTER TABLE inbox ALTER COLUMN body SET STORAGE EXTERNAL;
