-- no-transaction
-- Replaced by enrollments_by_contact_key (0036), which serves the same (contact, journey) reads.
DROP INDEX CONCURRENTLY IF EXISTS enrollments_by_contact;
