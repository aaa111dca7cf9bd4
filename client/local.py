"""Broker processes on 127.0.0.1: `raftka local`, and the same launcher for the bench and the tests.

Each broker is a real `raftka broker` child process with its own data directory and log file, and
every broker of a cluster names all of them in `--peers`, so `raftka local --brokers 3` is a real
3-broker Raft cluster. Stopping and restarting `raftka local` keeps the data. Ctrl-C (or SIGTERM)
stops the brokers gracefully. A broker that dies (say, `kill -9` to watch a failover) is restarted
after a second, as a supervisor would; one that keeps dying right after it starts ends the command.

`raftka local --tls` makes a local CA and certificates in `<data-dir>/tls` (`raftka.client.certs`), starts
every broker with TLS on all its ports (client certificates required), and prints the RAFTKA_TLS_*
variables that make the `raftka` command connect.
"""

from __future__ import annotations

import signal
import random
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftka.client.certs import LocalPki, local_pki
from raftka.wire.tls import ClientTls, open_channel

DEFAULT_LOCAL_BROKERS = 3
RESTART_DELAY_S = 1.0
QUICK_DEATH_S = 10.0
"""A broker that dies this soon after starting, three times running, is not restarted again."""


def free_port() -> int:
    """A port free now, chosen below the kernel's ephemeral range (usually from 32768): a port the
    kernel handed out for bind(0) can be taken by any outgoing connection before the broker binds
    it, and with many clients running that race is lost often enough to fail a test run."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_serving(address: str, timeout_s: float, service: str = "", tls: ClientTls | None = None) -> bool:
    """Whether the broker at `address` reports SERVING (it has a metadata leader) within the time, for
    the server as a whole (`""`) or one of its gRPC services (`raftka.v1.Broker`, ...)."""
    deadline = time.monotonic() + timeout_s
    with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    return False


@dataclass
class LocalBroker:
    """One broker child process; it keeps its port and data directory across restarts."""

    broker_id: int
    address: str
    data_dir: Path
    peers: str = ""
    metrics_port: int | None = None
    cluster_id: str = "raftka-local"
    extra_args: tuple[str, ...] = ()
    tls: ClientTls | None = None
    """How clients (and `wait`) reach this broker when it runs with TLS."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"broker-{self.broker_id}.log"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "raftka", "broker", "--id", str(self.broker_id), "--listen", self.address,
                   "--data-dir", str(self.data_dir), "--cluster-id", self.cluster_id]
        if self.peers:
            command += ["--peers", self.peers]
        if self.metrics_port is not None:
            command += ["--metrics-port", str(self.metrics_port)]
        return command + list(self.extra_args)

    def spawn(self) -> LocalBroker:
        """Start the process without waiting for it (a cluster's brokers need each other to serve)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def wait(self, timeout_s: float = 60.0) -> LocalBroker:
        """Wait until SERVING; raise with the log's tail if the process dies or takes too long."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"broker {self.broker_id} exited; log tail:\n{self.log()[-3000:]}")
            if wait_serving(self.address, min(1.0, max(0.0, deadline - time.monotonic())), tls=self.tls):
                return self
        raise RuntimeError(f"broker {self.broker_id} did not serve within {timeout_s}s; "
                           f"log tail:\n{self.log()[-3000:]}")

    def start(self, timeout_s: float = 60.0) -> LocalBroker:
        return self.spawn().wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL: no flush, no clean shutdown."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def pause(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait (the graceful path); SIGKILL if it does not end in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metric_total(self, prefix: str) -> float:
        """The sum of the broker's Prometheus samples whose line starts with `prefix` (all label values)."""
        if self.metrics_port is None:
            raise ValueError(f"broker {self.broker_id} serves no metrics (no --metrics-port)")
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(line.split(" ")[1]) for line in body.splitlines() if line.startswith(prefix))


def plan(brokers: int, data_dir: Path, ports: list[int], *, metrics_ports: list[int] | None = None,
         cluster_id: str = "raftka-local", extra_args: tuple[str, ...] = (),
         racks: list[str] | None = None, pki: LocalPki | None = None) -> list[LocalBroker]:
    """Brokers 1..N on 127.0.0.1 at `ports`, each naming all of them as peers (and its `--rack`), with
    TLS from `pki` when given (its client certificate is what `LocalBroker.tls` presents)."""
    addresses = [f"127.0.0.1:{port}" for port in ports[:brokers]]
    peers = ",".join(f"{i + 1}={address}" for i, address in enumerate(addresses))
    client_tls = ClientTls(pki.ca, *pki.client) if pki is not None else None
    return [LocalBroker(i + 1, address, data_dir / f"broker-{i + 1}", peers,
                        metrics_ports[i] if metrics_ports else None, cluster_id,
                        extra_args + (("--rack", racks[i]) if racks else ())
                        + (pki.broker_args(i + 1) if pki is not None else ()), client_tls)
            for i, address in enumerate(addresses)]


def run(brokers: int, data_dir: Path, base_port: int, *, startup_timeout_s: float = 60.0, tls: bool = False) -> int:
    """`raftka local`: run a cluster in the foreground until Ctrl-C (`tls`: `raftka local --tls`)."""
    if not 1 <= brokers <= 9:
        print(f"raftka local: --brokers must be between 1 and 9, not {brokers}", file=sys.stderr)
        return 2
    data_dir = data_dir.resolve()
    pki = local_pki(data_dir / "tls", brokers) if tls else None
    layout = plan(brokers, data_dir, [base_port + i for i in range(brokers)],
                  metrics_ports=[base_port + 100 + i for i in range(brokers)], pki=pki)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for broker in layout:
            broker.spawn()
        for broker in layout:
            try:
                broker.wait(startup_timeout_s)
            except RuntimeError:
                print(f"raftka local: broker {broker.broker_id} did not start; see {broker.log_path}", file=sys.stderr)
                return 1
        bootstrap = ",".join(b.address for b in layout)
        print(f"Raftka local cluster: {brokers} broker(s), data in {data_dir}", flush=True)
        for broker in layout:
            print(f"  broker {broker.broker_id}: {broker.address}  metrics http://127.0.0.1:{broker.metrics_port}/metrics"
                  f"  log {broker.log_path}", flush=True)
        print(f"bootstrap: {bootstrap}", flush=True)
        connect = f"export RAFTKA_BOOTSTRAP={bootstrap}"
        if pki is not None:
            cert, key = pki.client
            connect += f" RAFTKA_TLS_CA={pki.ca} RAFTKA_TLS_CERT={cert} RAFTKA_TLS_KEY={key}"
            print("TLS on the client and Raft ports (client certificates required; metrics stay plain HTTP on "
                  f"loopback); CA and certificates in {pki.directory}", flush=True)
        print(f"try: {connect}; raftka topic create demo --partitions 3", flush=True)
        print("Ctrl-C stops the cluster.", flush=True)
        started = {broker.broker_id: time.monotonic() for broker in layout}
        quick_deaths = {broker.broker_id: 0 for broker in layout}
        while not stopping:
            for broker in layout:
                if broker.alive():
                    continue
                code = broker.process.returncode if broker.process is not None else None
                quick = time.monotonic() - started[broker.broker_id] < QUICK_DEATH_S
                quick_deaths[broker.broker_id] = quick_deaths[broker.broker_id] + 1 if quick else 0
                if quick_deaths[broker.broker_id] >= 3:
                    print(f"raftka local: broker {broker.broker_id} keeps exiting ({code}); see {broker.log_path}",
                          file=sys.stderr)
                    return 1
                print(f"raftka local: broker {broker.broker_id} exited ({code}); restarting it", flush=True)
                time.sleep(RESTART_DELAY_S)
                broker.spawn()
                started[broker.broker_id] = time.monotonic()
            time.sleep(0.2)
        return 0
    finally:
        for broker in layout:
            if broker.alive():
                assert broker.process is not None
                broker.process.terminate()
        for broker in layout:
            broker.stop()
        print("Raftka local cluster stopped.", flush=True)
