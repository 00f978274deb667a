-- Frequency caps count the messages recorded for a contact in a window, for a whole step batch
-- at once (store/guardrails.rs `message_times`).
CREATE INDEX effects_messages_recorded ON effects (contact_id, created_at) WHERE kind IN ('email', 'sms');
