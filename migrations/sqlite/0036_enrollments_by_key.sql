-- Re-entry rules read a contact's earlier enrollments in a journey under one enrollment key.
-- With the key in the index that is one probe per new enrollment, not a scan of every
-- enrollment the contact has in the journey (a journey keyed per order or per event has
-- thousands). 0037 drops the index this one replaces.
CREATE INDEX IF NOT EXISTS enrollments_by_contact_key ON enrollments (contact_id, journey_id, enrollment_key);
