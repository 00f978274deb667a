-- A contact has at most one open lead. Assignments read the reps' counters without locking the
-- team, so two workers placing the same contact at once are kept apart here: the second insert
-- fails, and its assignment runs again and finds the lead the first one made.
CREATE UNIQUE INDEX assignments_one_open ON assignments (contact_id) WHERE status IN ('assigned', 'accepted', 'pooled');
