"""Logging configured once per process, by whoever starts it (the CLI, a benchmark, the app).

Library modules only do ``log = logging.getLogger(__name__)`` and never configure handlers themselves.
``configure_logging`` is idempotent: the first call installs one stderr handler on the root logger (unless
someone else, e.g. uvicorn, already configured logging); later calls only change the level.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["LOG_FORMAT", "configure_logging", "parse_level"]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_HANDLER_MARK = "_orthofm_handler"
_ENV_LEVEL = "ORTHOFM_LOG_LEVEL"


def parse_level(level: int | str | None) -> int:
    """``"debug"``/``"INFO"``/``20``/``None`` -> a logging level; ``None`` reads ``ORTHOFM_LOG_LEVEL`` (default INFO)."""
    if level is None:
        level = os.environ.get(_ENV_LEVEL, "INFO")
    if isinstance(level, int):
        return level
    text = str(level).strip()
    if text.isdigit():
        return int(text)
    value = logging.getLevelName(text.upper())
    if isinstance(value, int):
        return value
    raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")


def _our_handler(root: logging.Logger) -> logging.Handler | None:
    return next((h for h in root.handlers if getattr(h, _HANDLER_MARK, False)), None)


def configure_logging(level: int | str | None = None) -> logging.Logger:
    """Set up logging for the ``orthofm`` loggers; safe to call many times. Returns the ``orthofm`` logger."""
    resolved = parse_level(level)
    root = logging.getLogger()
    handler = _our_handler(root)
    if handler is None and not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    if handler is not None:
        root.setLevel(resolved)
    logger = logging.getLogger("orthofm")
    logger.setLevel(resolved)
    return logger
