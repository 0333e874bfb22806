-- 0001: the schema of flashsale 0.1.0, the last release before numbered migrations.
--
-- Idempotent (IF NOT EXISTS, ADD COLUMN IF NOT EXISTS, a guarded backfill), so the same file
-- builds an empty database and takes over a database made by an earlier flashsale (which has
-- the tables but no schema_migrations): the columns added during 0.1.0 that such a database
-- lacks are added, then 0001 is recorded. Frozen from now on: changes go in new files.
--
-- Locks: on an empty database, nothing anyone uses. On a database of an earlier flashsale,
--   each ALTER TABLE takes ACCESS EXCLUSIVE on sales or orders (even when the column is there
--   already, as every 0.1.0 process did at each start) until the migration commits: a moment
--   on a 0.1.0 database. On an older one, adding sales.bookings_stored counts the bookings
--   once while sales stays locked: seconds for millions of bookings.
-- Transaction: yes (one).

CREATE TABLE IF NOT EXISTS sales (
    sale_id           text PRIMARY KEY,
    sku               text        NOT NULL,
    name              text        NOT NULL,
    price_cents       bigint      NOT NULL CHECK (price_cents >= 0),
    stock             integer     NOT NULL CHECK (stock >= 0),
    per_user_limit    integer     NOT NULL CHECK (per_user_limit >= 1),
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL CHECK (ends_at > starts_at),
    reservation_ttl_s integer     NOT NULL CHECK (reservation_ttl_s >= 1),
    state             text        NOT NULL DEFAULT 'active'
                                  CHECK (state IN ('active', 'paused', 'closed')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per order, following every status change. "version" counts the order's changes in
-- Redis; an update applies only when it is newer, so replays and reordered events are harmless.
CREATE TABLE IF NOT EXISTS orders (
    order_id   text PRIMARY KEY,
    sale_id    text        NOT NULL REFERENCES sales (sale_id),
    user_id    text        NOT NULL,
    quantity   integer     NOT NULL CHECK (quantity >= 1),
    status     text        NOT NULL CHECK (status IN ('reserved', 'paid', 'expired', 'cancelled')),
    version    integer     NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS orders_sale_status ON orders (sale_id, status);
CREATE INDEX IF NOT EXISTS orders_sale_user ON orders (sale_id, user_id);

-- F-codes (added after the first release: ALTERs keep older databases in step)
ALTER TABLE sales ADD COLUMN IF NOT EXISTS fcode_stock integer NOT NULL DEFAULT 0
    CHECK (fcode_stock >= 0);
ALTER TABLE sales ADD COLUMN IF NOT EXISTS fcode_opens_at timestamptz;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS fcode text;      -- digest of the code used, if any
ALTER TABLE orders ADD COLUMN IF NOT EXISTS campaign text;   -- its campaign

CREATE TABLE IF NOT EXISTS fcode_campaigns (
    sale_id    text        NOT NULL REFERENCES sales (sale_id),
    campaign   text        NOT NULL,
    issued     integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    loaded_at  timestamptz,            -- set once every code of the campaign is in Redis
    PRIMARY KEY (sale_id, campaign)
);

-- A code is stored only as its keyed hash (HMAC). Its redemptions are the orders rows with
-- this fcode; "state" follows the newest of them, "state_ms" orders the updates.
CREATE TABLE IF NOT EXISTS fcodes (
    digest      text        PRIMARY KEY,
    sale_id     text        NOT NULL,
    campaign    text        NOT NULL,
    bound_user  text,
    state       text        NOT NULL DEFAULT 'issued'
                            CHECK (state IN ('issued', 'redeemed', 'revoked')),
    order_id    text,
    redeemed_by text,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    redeemed_at timestamptz,
    revoked_at  timestamptz,
    state_ms    bigint      NOT NULL DEFAULT 0,
    FOREIGN KEY (sale_id, campaign) REFERENCES fcode_campaigns (sale_id, campaign)
);

CREATE INDEX IF NOT EXISTS fcodes_sale_campaign ON fcodes (sale_id, campaign, state);
CREATE INDEX IF NOT EXISTS orders_fcode ON orders (fcode) WHERE fcode IS NOT NULL;

-- Booking queue (added after F-codes)
ALTER TABLE sales ADD COLUMN IF NOT EXISTS booking_opens_at timestamptz;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS booking_closes_at timestamptz;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS booking_required boolean NOT NULL DEFAULT false;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS booking_capacity integer CHECK (booking_capacity >= 1);
ALTER TABLE sales ADD COLUMN IF NOT EXISTS admission text
    CHECK (admission IN ('arrival', 'booking_order', 'lottery'));
ALTER TABLE sales ADD COLUMN IF NOT EXISTS admission_ratio double precision NOT NULL DEFAULT 1.0;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS admission_window_s integer NOT NULL DEFAULT 120;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS lottery_seed text;

-- One row per booking. Numbers are given by Redis (dense, in arrival order); live bookings
-- arrive through the events stream, imported ones from `flashsale bookings import`.
CREATE TABLE IF NOT EXISTS bookings (
    sale_id    text        NOT NULL REFERENCES sales (sale_id),
    booking_no integer     NOT NULL CHECK (booking_no >= 1),
    user_id    text        NOT NULL,
    booked_at  timestamptz NOT NULL,
    source     text        NOT NULL CHECK (source IN ('web', 'import')),
    PRIMARY KEY (sale_id, booking_no),
    UNIQUE (sale_id, user_id)
);

-- How many bookings of a sale PostgreSQL holds, kept by every insert (counting 7.5 million rows
-- on each look at the stats took seconds). Filled from the rows when the column is new.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'sales' AND column_name = 'bookings_stored'
                     AND table_schema = current_schema()) THEN
        ALTER TABLE sales ADD COLUMN bookings_stored bigint NOT NULL DEFAULT 0;
        UPDATE sales s SET bookings_stored = c.n
        FROM (SELECT sale_id, count(*) AS n FROM bookings GROUP BY sale_id) c
        WHERE s.sale_id = c.sale_id;
    END IF;
END $$;

-- Rate limits per sale (added after the booking queue): requests a second and burst, for buy
-- and book, per shopper and per client address; a rate of 0 switches one off.
ALTER TABLE sales ADD COLUMN IF NOT EXISTS rate_per_user double precision NOT NULL DEFAULT 10;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS burst_per_user integer NOT NULL DEFAULT 20;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS rate_per_address double precision NOT NULL DEFAULT 0;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS burst_per_address integer NOT NULL DEFAULT 0;
