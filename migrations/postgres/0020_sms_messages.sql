-- Every SMS handed to a provider (or written to the outbox), with what it costs: ROI reads
-- these. No phone number is kept here: erasing the contact erases it.
CREATE TABLE sms_messages (
    provider TEXT NOT NULL,
    -- The provider's id (Twilio's `SM...`); the effect key where the provider gives none.
    message_id TEXT NOT NULL,
    effect_key TEXT NOT NULL,
    contact_id BIGINT NOT NULL,
    journey_id TEXT NOT NULL,
    segments INTEGER NOT NULL,
    encoding TEXT NOT NULL,
    cost DOUBLE PRECISION,
    currency TEXT,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (provider, message_id)
);
CREATE INDEX sms_messages_by_contact ON sms_messages (contact_id, sent_at);
CREATE INDEX sms_messages_by_effect ON sms_messages (effect_key);

-- The latest delivery state the provider reported. Status callbacks arrive out of order, and
-- may arrive before the message row above is written: a row only moves to a higher rank.
CREATE TABLE sms_deliveries (
    provider TEXT NOT NULL,
    message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    rank INTEGER NOT NULL,
    error_code TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (provider, message_id)
);

-- Inbound STOP / 退订 / TD find their contacts by phone number.
CREATE INDEX contacts_phone ON contacts (phone);
