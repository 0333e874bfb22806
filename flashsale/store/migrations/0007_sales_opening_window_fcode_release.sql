-- 0007: a sale's opening window and the release of its F-code lane. opening_window_ms is the
-- window (NULL: none; the sale view shows 0), opening_seed the seed its tickets are put in
-- order with (secret until the window closes; its SHA-256 is published from the creation).
-- A sale with a window keeps its admission ratio and admission window in the booking queue's
-- columns admission_ratio and admission_window_s (a sale has one queue at most).
-- fcode_release_at is when the F-code units nobody redeemed pass to the public lane (NULL:
-- never). Safe to run again (IF NOT EXISTS); the rows already there read NULL: no window, no
-- release, as before.
--
-- Locks: sales, ACCESS EXCLUSIVE, for a moment. Nullable columns without a default are a
--   catalog change: no table rewrite, no scan; orders and every other table are not touched.
--   Waits at most 5 s for the lock (lock_timeout); on a timeout the migration fails, changes
--   nothing, and is tried again at the next start or `flashsale db migrate`.
-- Transaction: yes.

SET LOCAL lock_timeout = '5s';

ALTER TABLE sales
    ADD COLUMN IF NOT EXISTS opening_window_ms integer,
    ADD COLUMN IF NOT EXISTS opening_seed text,
    ADD COLUMN IF NOT EXISTS fcode_release_at timestamptz;
