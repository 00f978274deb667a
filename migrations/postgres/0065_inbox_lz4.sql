-- A stored request's body (a /v1/batch of 200 messages is ~30 KB) is compressed by TOAST. The
-- default, pglz, cost PostgreSQL ~100 µs of CPU per 28 KB body (measured on 1,000 such bodies,
-- beyond the time to build them: pglz 100 ms, lz4 too little to tell, uncompressed 37 ms at
-- seven times the size). lz4 where this server was built with it (PostgreSQL 14 and later, as
-- most are); elsewhere the default stays.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_settings
        WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)
    ) THEN
        ALTER TABLE inbox ALTER COLUMN body SET COMPRESSION lz4;
    END IF;
END
$$;
