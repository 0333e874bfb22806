"""One logging setup for every flashsale command."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    level = os.environ.get("FLASHSALE_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # per-request access lines would drown a sale; ask for them with FLASHSALE_LOG_LEVEL=DEBUG
    logging.getLogger("aiohttp.access").setLevel(max(logging.getLevelName(level), logging.WARNING))
