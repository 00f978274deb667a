-- A journey's enrollments by status and step: the live counts (`GET /v1/journeys/{id}/counts`,
-- one grouped query, read from this index alone) and what a resume queues again (`held`) read
-- one journey's enrollments instead of all of them.
CREATE INDEX enrollments_by_journey ON enrollments (journey_id, status, step);
