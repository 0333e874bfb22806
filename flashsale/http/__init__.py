"""The HTTP face: an aiohttp application over the engine and the store."""
