"""The service's log lines, as text or as JSON (``keyvault serve --log-format json``).

Text: ``2026-01-02 10:00:00,123 INFO keyvault.service[4242] message``. JSON: one object per line,
``{"time": "2026-01-02T10:00:00.123Z", "level": "INFO", "logger": "keyvault.service", "message": "...",
"pid": 4242, ...}``, any further fields of the record (``extra=``) as members. Every process of the
service (the supervisor, the commit process, each worker and its uvicorn server) logs through
:func:`log_config`; the access log (accesslog.py) writes the same shapes itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
#: LogRecord attributes that are not fields of the line (everything else a record carries is a field).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                 "color_message", "taskName"}
_encode = msgspec.json.Encoder().encode


def utc_stamp(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC with milliseconds: 2026-01-02T10:00:00.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, pid, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (no newline)."""
        doc: dict[str, Any] = {"time": utc_stamp(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage(), "pid": record.process}
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in doc:
                doc[name] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        return _encode(doc).decode()


def check_format(log_format: str) -> str:
    """``log_format`` if it is one of FORMATS, else ValueError saying which are."""
    if log_format not in FORMATS:
        raise ValueError(f"the log format is one of {', '.join(FORMATS)}, not {log_format!r}")
    return log_format


def log_config(log_format: str = "text") -> dict[str, Any]:
    """logging.config.dictConfig's dictionary for a process of the service: its lines on stderr, as ``log_format``."""
    formatter: dict[str, Any] = ({"()": f"{__name__}.JsonFormatter"} if check_format(log_format) == "json"
                                 else {"format": TEXT_FORMAT})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},  # it would log raw paths
            "keyvault": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }
