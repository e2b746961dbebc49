"""Logging for every guestinfo process: text for people, JSON lines for log pipelines."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(verbosity: int = 0, log_format: LogFormat = "text", role: str = "guestinfo") -> None:
    """Configure the root logger: -q warnings only, default info, -v debug for guestinfo's own code."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {role:>7} %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries say what they do per message or per service start: warnings only, INFO with -v.
    library_level = logging.INFO if verbosity > 0 else logging.WARNING
    for noisy in ("aiokafka", "faust", "mode", "kafka", "asyncio", "aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(max(level, library_level))
