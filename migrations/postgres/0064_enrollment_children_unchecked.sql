-- Rows a step batch writes for its enrollments (history, effects, waiters, conversions) are no
-- longer checked against `enrollments` one by one. Enrollments are never deleted (erasure keeps
-- them on an anonymous contact, a merge moves them), so the cascade never ran, and the check
-- cost a locked lookup per row: with a plan made while `enrollments` was small, a scan of the
-- whole table per row (one 696-row history insert took 6 s in the reference bench). These rows
-- are only written in the transaction that moved their enrollment (store/enrollments.rs).
ALTER TABLE step_history DROP CONSTRAINT IF EXISTS step_history_enrollment_id_fkey;
ALTER TABLE effects DROP CONSTRAINT IF EXISTS effects_enrollment_id_fkey;
ALTER TABLE waiters DROP CONSTRAINT IF EXISTS waiters_enrollment_id_fkey;
ALTER TABLE conversions DROP CONSTRAINT IF EXISTS conversions_enrollment_id_fkey;
