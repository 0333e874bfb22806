"""The PostgreSQL store: schema, sales, orders and the stream-to-table order writer."""
