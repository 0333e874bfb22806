-- 0004: every sale has a currency (ISO 4217: three upper-case letters), the currency of its
-- price_cents and of the payments made for it. Sales already there get the deployment's
-- default currency, FLASHSALE_DEFAULT_CURRENCY, which the migration runner hands to the
-- session as flashsale.default_currency ('USD' when it is not set), and it stays the column's
-- default, so a sale created by a process of the previous release meanwhile gets it too.
-- Safe to run again (IF NOT EXISTS).
--
-- Locks: sales, ACCESS EXCLUSIVE, for a moment. ADD COLUMN with a constant default is a
--   catalog change (PostgreSQL 11+): no table rewrite, the existing rows read the default
--   from the catalog. The new CHECK is verified by one scan of sales under that lock, one row
--   per sale, so a moment too. orders and every other table are not touched. Waits at most
--   5 s for the lock (lock_timeout); on a timeout the migration fails, changes nothing, and is
--   tried again at the next start or `flashsale db migrate`.
-- Transaction: yes.

SET LOCAL lock_timeout = '5s';

DO $$
DECLARE
    currency text := coalesce(nullif(current_setting('flashsale.default_currency', true), ''),
                              'USD');
BEGIN
    IF currency !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'FLASHSALE_DEFAULT_CURRENCY must be an ISO 4217 code such as USD, got %',
            currency;
    END IF;
    -- the default must be a constant for the catalog-only ADD COLUMN: spell the value out
    EXECUTE format(
        'ALTER TABLE sales ADD COLUMN IF NOT EXISTS currency text NOT NULL DEFAULT %L'
        ' CONSTRAINT sales_currency_iso4217 CHECK (currency ~ ''^[A-Z]{3}$'')',
        currency);
END $$;
