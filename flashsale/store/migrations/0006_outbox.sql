-- 0006: order events (flashsale/outbox). "outbox" holds one row per change of an order, written
-- in the PostgreSQL transaction of the change itself, with its payload built then: the relay
-- only moves rows, and the shop may pull the same rows (GET /v1/admin/events). An event is
-- keyed by its order and the order's version (its per-order sequence), so a replayed writer
-- batch inserts nothing twice; event_id, made from that key, is the webhook-id of every
-- delivery. txid is the inserting transaction, for the pull cursor: rows are read in (txid, id)
-- order and only below the oldest transaction still running, so a row that commits late is
-- never skipped. "webhook_receivers" holds each receiver URL's state (how far it has taken
-- events from the outbox, disabled, failing) and "outbox_deliveries" one row per event and
-- receiver: pending until delivered (or given up), with its attempts and the next one's time.
--
-- Locks: nothing anyone uses (new tables and their indexes).
-- Transaction: yes.

CREATE TABLE IF NOT EXISTS outbox (
    id         bigserial   PRIMARY KEY,
    event_id   text        NOT NULL UNIQUE,
    order_id   text        NOT NULL,
    sale_id    text,
    -- the order's version after the change; NULL for a payment naming no order of ours
    sequence   integer     CHECK (sequence >= 1),
    type       text        NOT NULL,
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    txid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (order_id, sequence)
);

-- the pull cursor and the relay read in (txid, id) order
CREATE INDEX IF NOT EXISTS outbox_txid_id ON outbox (txid, id);
-- flashsale events redeliver --since
CREATE INDEX IF NOT EXISTS outbox_created_at ON outbox (created_at);

CREATE TABLE IF NOT EXISTS webhook_receivers (
    url             text        PRIMARY KEY,
    -- the (txid, id) of the last outbox row taken for this receiver: later ones are not yet
    cursor_txid     xid8        NOT NULL,
    cursor_id       bigint      NOT NULL,
    added_at        timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,            -- it answered 410 Gone; until re-enabled
    disabled_reason text,
    failing_since   timestamptz,            -- its latest answers were failures
    last_error      text,
    last_success_at timestamptz
);

CREATE TABLE IF NOT EXISTS outbox_deliveries (
    receiver         text        NOT NULL REFERENCES webhook_receivers (url) ON DELETE CASCADE,
    outbox_id        bigint      NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    order_id         text        NOT NULL,
    sequence         integer,
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz,
    last_error       text,
    delivered_at     timestamptz,
    gave_up_at       timestamptz,
    PRIMARY KEY (receiver, outbox_id)
);

-- the relay's work: the pending deliveries of a receiver, soonest due first ...
CREATE INDEX IF NOT EXISTS outbox_deliveries_due
    ON outbox_deliveries (receiver, next_attempt_at, outbox_id)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
-- ... each only when no earlier event of its order is pending for that receiver
CREATE INDEX IF NOT EXISTS outbox_deliveries_order
    ON outbox_deliveries (receiver, order_id, sequence)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
