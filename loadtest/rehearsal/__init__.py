"""The launch-day rehearsal's driver: ``python -m loadtest.rehearsal`` (see driver.py)."""
