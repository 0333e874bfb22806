-- 0003: check the orders already stored against orders_fcode_one_unit (added NOT VALID by
-- 0002); afterwards the constraint is valid and the planner may rely on it.
--
-- Locks: orders, SHARE UPDATE EXCLUSIVE while it reads the whole table (about a second per
--   few million rows): reads and writes of orders go on, only other schema changes, VACUUM and
--   index builds on orders wait. A row that breaks the rule fails the migration and names the
--   constraint; nothing is changed, and it is tried again at the next start.
-- Transaction: yes.

ALTER TABLE orders VALIDATE CONSTRAINT orders_fcode_one_unit;
