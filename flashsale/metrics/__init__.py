"""Metrics for Prometheus: what the processes count, what /metrics reads when scraped.

``tally.py`` is all the hot path touches (plain ints); ``publish.py`` moves those counts, and
the background loops' running totals, into the metrics of ``registry.py`` about once a second;
``collect.py`` reads the numbers that live in Redis and PostgreSQL when scraped; ``http.py`` is
the counting middleware and ``GET /metrics``; ``multiprocess.py`` lets ``serve``'s processes
report as one.
"""
