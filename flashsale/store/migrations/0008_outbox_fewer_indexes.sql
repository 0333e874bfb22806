-- flashsale:no-transaction
-- 0008: an outbox row costs fewer index entries. Every order change writes one, so each index
-- of outbox is paid for on the buy path's box. Two of 0006's five go:
-- * the btree on created_at served only `flashsale events redeliver --since`: a BRIN index
--   takes its place, which costs next to nothing to keep on a table that only grows at its
--   end (the rows' created_at rise with their pages) and still finds a time's first rows;
-- * event_id's own UNIQUE repeated the uniqueness of (order_id, sequence), from which an
--   order's event_id is made (a hash of the two); it is needed only for a payment naming no
--   order of ours (sequence NULL, its event_id made from the payment id), so it is kept for
--   those rows only, where it keeps such a payment's event from being recorded twice.
-- Safe to run again: after a crash midway the runner starts it from the top, and an index
-- build left INVALID is dropped and built again.
--
-- Locks: outbox, SHARE UPDATE EXCLUSIVE while each index is built and while the btree is
--   dropped (CONCURRENTLY: the writer's inserts and the relay's reads go on; each build reads
--   the table, a second or so per million rows). Dropping event_id's UNIQUE constraint takes
--   ACCESS EXCLUSIVE on outbox for a moment (no scan); it waits at most 5 s for that lock
--   (lock_timeout), and on a timeout the migration fails, changes nothing more, and is tried
--   again at the next start or `flashsale db migrate`.
-- Transaction: no (CREATE INDEX CONCURRENTLY cannot run in one); one statement at a time.

CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_created_at_brin ON outbox
    USING brin (created_at) WITH (autosummarize = on);

DROP INDEX CONCURRENTLY IF EXISTS outbox_created_at;

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS outbox_event_id_without_order ON outbox (event_id)
    WHERE sequence IS NULL;

SET lock_timeout = '5s';

ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_event_id_key;
