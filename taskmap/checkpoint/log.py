"""Where the checkpoint store's messages go: the graph's manager logger."""

from __future__ import annotations

import logging
from typing import Any


def log(graph_name: str, level: int, message: str, *args: Any) -> None:
    """Log on the graph's manager logger, only if someone listens (a library
    must not reach Python's last-resort stderr handler)."""
    logger = logging.getLogger(f"{graph_name}-manager")
    if logger.isEnabledFor(level) and logger.hasHandlers():
        logger.log(level, message, *args)
