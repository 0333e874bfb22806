"""F-codes: priority purchase codes. Format, hashing and references (``codes``), issuing
(``issue``), revoking, counting and checking (``admin_ops``), exporting (``export``)."""
