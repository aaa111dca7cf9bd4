"""`raftka local`: a development cluster of broker processes on 127.0.0.1, in the foreground.

Each broker is a real `raftka broker` child process with its own data directory and log file under
the chosen data directory, so stopping and restarting `raftka local` keeps the data. Ctrl-C (or
SIGTERM) stops the brokers gracefully; if a broker dies, the others are stopped and the command fails.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MAX_LOCAL_BROKERS = 1
"""Brokers `raftka local` can run until replication lands; each would otherwise be its own cluster."""


@dataclass(frozen=True)
class LocalBroker:
    broker_id: int
    address: str
    data_dir: Path
    metrics_port: int

    def command(self) -> list[str]:
        return [sys.executable, "-m", "raftka", "broker", "--id", str(self.broker_id), "--listen", self.address,
                "--data-dir", str(self.data_dir), "--metrics-port", str(self.metrics_port)]


def plan(brokers: int, data_dir: Path, base_port: int) -> list[LocalBroker]:
    return [LocalBroker(i, f"127.0.0.1:{base_port + i}", data_dir / f"broker-{i}", base_port + 100 + i)
            for i in range(brokers)]


def wait_serving(address: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def run(brokers: int, data_dir: Path, base_port: int, *, startup_timeout_s: float = 30.0) -> int:
    if not 1 <= brokers <= MAX_LOCAL_BROKERS:
        print(f"raftka local: --brokers must be between 1 and {MAX_LOCAL_BROKERS} until replicated partitions "
              "land; more brokers would be separate clusters", file=sys.stderr)
        return 2
    layout = plan(brokers, data_dir.resolve(), base_port)
    children: list[tuple[LocalBroker, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for broker in layout:
            broker.data_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(broker.data_dir / "broker.log", "ab")
            children.append((broker, subprocess.Popen(broker.command(), stdout=log_file, stderr=subprocess.STDOUT,
                                                      start_new_session=True)))
            log_file.close()
        for broker, process in children:
            if not wait_serving(broker.address, startup_timeout_s):
                print(f"raftka local: broker {broker.broker_id} did not start; see {broker.data_dir / 'broker.log'}",
                      file=sys.stderr)
                return 1
        bootstrap = ",".join(b.address for b in layout)
        print(f"Raftka local cluster: {brokers} broker(s), data in {data_dir}", flush=True)
        for broker in layout:
            print(f"  broker {broker.broker_id}: {broker.address}  metrics http://127.0.0.1:{broker.metrics_port}/metrics"
                  f"  log {broker.data_dir / 'broker.log'}", flush=True)
        print(f"bootstrap: {bootstrap}", flush=True)
        print(f"try: export RAFTKA_BOOTSTRAP={bootstrap}; raftka topic create demo --partitions 3", flush=True)
        print("Ctrl-C stops the cluster.", flush=True)
        while not stopping:
            for broker, process in children:
                if process.poll() is not None:
                    print(f"raftka local: broker {broker.broker_id} exited with {process.returncode}; "
                          f"see {broker.data_dir / 'broker.log'}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for _, process in children:
            if process.poll() is None:
                process.terminate()
        for _, process in children:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if children:
            print("Raftka local cluster stopped.", flush=True)
