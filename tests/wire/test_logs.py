"""JSON log lines: one object per line, the key=value fields of the message as keys."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

from raftka.client.local import free_port
from raftka.wire.logs import JsonFormatter


def _record(message: str, *args: object, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("raftka.cluster.broker", logging.INFO, __file__, 1, message, args, exc_info)


def test_fields_of_the_message_become_keys() -> None:
    line = json.loads(JsonFormatter().format(_record("retention deleted segments topic=%s partition=%d time=%s",
                                                     "orders", 3, "x")))
    assert line["message"] == "retention deleted segments topic=orders partition=3 time=x"
    assert (line["level"], line["logger"], line["topic"], line["partition"]) == (
        "INFO", "raftka.cluster.broker", "orders", "3")
    assert line["time"].endswith("Z") and line["time"] != "x", "a field never overrides the record's own keys"


def test_an_exception_is_one_key_of_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        formatted = JsonFormatter().format(_record("failed group=%s", "g", exc_info=sys.exc_info()))
    assert "\n" not in formatted
    line = json.loads(formatted)
    assert line["group"] == "g" and "ValueError: boom" in line["exception"]


def test_a_broker_logs_json_lines(tmp_path) -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "raftka", "--log-format", "json", "broker", "--id", "1",
                                "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        for text in process.stderr:
            line = json.loads(text)
            if line["message"].startswith("broker started"):
                break
        else:
            raise AssertionError(f"the broker exited with status {process.wait()} before it started")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert (line["level"], line["logger"], line["id"], line["listen"]) == (
        "INFO", "raftka.cluster.broker", "1", f"127.0.0.1:{port}")
