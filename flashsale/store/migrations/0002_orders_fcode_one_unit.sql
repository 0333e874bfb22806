-- 0002: an order bought with an F-code is for one unit, and now PostgreSQL holds to it too
-- (the buy endpoint has refused any other quantity with an F-code since F-codes exist; the
-- code's unit goes back to the F-code units on release, never more). Added NOT VALID: new and
-- updated rows are checked from now on, the rows already there by 0003, without this lock.
--
-- Locks: orders, ACCESS EXCLUSIVE, for a moment (no scan). Waits at most 5 s for the lock
--   (lock_timeout), so a long reader of orders cannot make the writer and every buy queue up
--   behind this ALTER; on a timeout the migration fails, changes nothing, and is tried again
--   at the next start or `flashsale db migrate`.
-- Transaction: yes.

SET LOCAL lock_timeout = '5s';

ALTER TABLE orders ADD CONSTRAINT orders_fcode_one_unit CHECK (fcode IS NULL OR quantity = 1)
    NOT VALID;
