"""F-codes: priority purchase codes. Format and hashing (``codes``), issuing (``issue``)."""
