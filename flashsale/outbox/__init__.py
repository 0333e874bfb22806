"""Order events for the shop: the transactional outbox and what reads it.

``events.py`` records one outbox row per order change, in the transaction of the change, its
payload built then; ``relay.py`` delivers them to the webhook receivers (``receivers.py`` keeps
each receiver's state); ``cursor.py`` is the pull API's cursor over the same rows.
"""
