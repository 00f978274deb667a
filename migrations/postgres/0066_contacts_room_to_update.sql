-- Every event sets its contact's `last_seen_at`, and an assignment its `owner`; neither is
-- indexed, so the update can be HOT (no index entries) if the row's page has room for the new
-- version. Pages filled to the brim by inserts have none: leave a fifth of each new page free.
ALTER TABLE contacts SET (fillfactor = 80);
