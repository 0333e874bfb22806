"""Reconciliation: compare a sale in Redis with PostgreSQL, and repair what can be repaired
idempotently (``flashsale reconcile SALE_ID [--repair]``)."""
