"""Shared fixtures: real `raftka broker` processes on 127.0.0.1 with data on disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftka.proto import api_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    """One broker child process; it keeps its port and data directory across restarts."""

    def __init__(self, data_dir: Path, broker_id: int = 0, *extra_args: str) -> None:
        self.broker_id = broker_id
        self.data_dir = data_dir
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"broker-{broker_id}.log"
        self.extra_args = extra_args

    def start(self, timeout_s: float = 30.0) -> BrokerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "raftka", "broker", "--id", str(self.broker_id), "--listen", self.address,
                 "--data-dir", str(self.data_dir), "--metrics-port", str(self.metrics_port), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"broker exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    time.sleep(0.05)
        raise RuntimeError(f"broker did not become healthy:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no clean shutdown."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM and wait: the graceful path."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start brokers with extra `raftka broker` flags; each is stopped (gracefully) after the test."""
    started: list[BrokerProcess] = []

    def start(*extra_args: str) -> BrokerProcess:
        broker_id = len(started)
        process = BrokerProcess(tmp_path / f"broker-{broker_id}", broker_id, *extra_args).start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.alive():
            assert process.stop() == 0, process.log()


@pytest.fixture
def broker(start_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    return start_broker()


@pytest.fixture
def stubs(broker: BrokerProcess) -> Iterator[tuple[api_pb2_grpc.BrokerStub, api_pb2_grpc.AdminStub]]:
    with grpc.insecure_channel(broker.address) as channel:
        yield api_pb2_grpc.BrokerStub(channel), api_pb2_grpc.AdminStub(channel)


@pytest.fixture
def cli_env(broker: BrokerProcess) -> dict[str, str]:
    return {**os.environ, "RAFTKA_BOOTSTRAP": broker.address}


@pytest.fixture(name="free_port")
def free_port_fixture():  # type: ignore[no-untyped-def]
    """A function returning an unused TCP port on 127.0.0.1."""
    return free_port
