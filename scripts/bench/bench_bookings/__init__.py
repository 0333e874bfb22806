"""The modules of scripts/bench-bookings, whose entry point is scripts/bench/bookings.py (that
directory is on sys.path, so ``helper`` and this package import as top-level names).

    report        the report's lines (stdout and report.txt), progress, number formats
    servers       the processes started (private Redis, service, wrk), the throwaway database,
                  the clean-up
    measure       CPU seconds, INFO commandstats and memory of Redis, timed calls, pinning
    context       what the parts share: options, connections, the sales and their users
    import_memory parts 1 to 3: imports (Redis alone, with PostgreSQL) and Redis memory
    live          parts 4 and 5: live bookings, engine level and over HTTP
    wrk           running wrk with buy.lua and reporting its figures (part 5)
    admission     part 6: what the queue check costs a buy
"""
