"""The ``flashsale`` command line."""
