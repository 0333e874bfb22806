-- 0005: the payments table, one row per payment the payment service notified us of, with the
-- outcome the engine decided for it: "paid", or "refund_required" with the reason (wrong
-- amount or currency, unknown, cancelled, expired or already paid order). payment_id is the
-- payment service's id, so a payment notified twice is stored once. sale_id is NULL when the
-- order id names no sale of ours; order_version is the order version the payment produced
-- (NULL when there is no such order). No foreign keys: a payment is a record of what the
-- payment service sent, which may name orders and sales this database never had.
--
-- Written to be safe to run again (IF NOT EXISTS).
--
-- Locks: nothing anyone uses (a new table and its indexes).
-- Transaction: yes.

CREATE TABLE IF NOT EXISTS payments (
    payment_id    text        PRIMARY KEY,
    order_id      text        NOT NULL,
    sale_id       text,
    amount_cents  bigint      NOT NULL CHECK (amount_cents >= 0),
    currency      text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    outcome       text        NOT NULL CHECK (outcome IN ('paid', 'refund_required')),
    reason        text,
    late          boolean     NOT NULL DEFAULT false,
    webhook_id    text        NOT NULL,
    order_version integer,
    received_at   timestamptz NOT NULL,
    decided_at    timestamptz NOT NULL,
    CHECK ((outcome = 'paid') = (reason IS NULL)),
    CHECK (NOT late OR outcome = 'paid')
);

-- the payments of an order
CREATE INDEX IF NOT EXISTS payments_order ON payments (order_id);
-- a notification sent again under the same webhook-id finds its first answer
CREATE INDEX IF NOT EXISTS payments_webhook ON payments (webhook_id);
