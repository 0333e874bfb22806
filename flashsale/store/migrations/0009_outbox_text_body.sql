-- 0009: an order event is stored as the text it is sent as. Every order change writes an
-- outbox row, and PostgreSQL parsing its payload into jsonb was the largest part of the row's
-- cost (a third of its instructions), for nothing: the relay and the pull API only read the
-- text back (rendering the jsonb again each time), and nothing queries inside it. New rows
-- carry the event in "body" (text: the exact bytes receivers get and the signature covers)
-- and leave "payload" NULL; rows written before (or by a 0.2.0 writer still running during
-- an upgrade) keep their jsonb "payload" and no body. Readers take the one there is
-- (coalesce(body, payload::text)); the CHECK keeps every row with exactly one. Safe to run
-- again (IF NOT EXISTS; the constraint is looked up first).
--
-- Locks: outbox, ACCESS EXCLUSIVE, for a moment. A nullable column without a default, a NOT
--   NULL dropped and a CHECK added NOT VALID are catalog changes: no table rewrite, no scan
--   (the rows there all have a payload). Waits at most 5 s for the lock (lock_timeout); on a
--   timeout the migration fails, changes nothing, and is tried again at the next start or
--   `flashsale db migrate`.
-- Transaction: yes.

SET LOCAL lock_timeout = '5s';

ALTER TABLE outbox
    ADD COLUMN IF NOT EXISTS body text,
    ALTER COLUMN payload DROP NOT NULL;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'outbox_body_or_payload' AND conrelid = 'outbox'::regclass) THEN
        ALTER TABLE outbox ADD CONSTRAINT outbox_body_or_payload
            CHECK (num_nonnulls(body, payload) = 1) NOT VALID;
    END IF;
END
$$;
