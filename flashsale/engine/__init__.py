"""The Redis engine: key layout, the atomic Lua scripts and the Python that calls them."""
