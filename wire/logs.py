"""Log line formats: the default text, or one JSON object per line (`--log-format json`) for log shippers.

Log messages carry their facts as greppable `key=value` fields (`broker started id=1 listen=...`); the
JSON format keeps the message whole and lifts those fields to keys of their own, as strings, next to
`time`, `level` and `logger` (a field named like one of those is left in the message only).
"""

from __future__ import annotations

import json
import logging
import re
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_FIELD = re.compile(r"(?<![\w.-])([a-z_][a-z0-9_]*)=(\S+)")
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = {"time": f"{moment}.{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                "message": message}
        for key, value in _FIELD.findall(message):
            if key not in _RESERVED:
                line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """Configure the root logger: `log_format` is "text" or "json"."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
