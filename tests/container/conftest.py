"""Docker and testcontainers for tests of Raftka's container image (Dockerfile, scripts/build-image).

Docker is set up, never assumed: the session's first use runs scripts/install-docker (it installs
Debian's docker.io and starts a daemon if none answers) and scripts/build-image, and either failing
FAILS the tests with the script's output. Nothing here skips: CI must run these tests.

Containers run with host networking (the daemon has no bridge: scripts/install-docker), so each
broker binds its own loopback address, 127.A.B.C outside 127.0.0.0/24 where the other tests' brokers
listen, on the image's fixed ports; `extra_hosts` maps names (a StatefulSet's pod DNS names, say) to
such addresses. testcontainers runs without Ryuk (its image cannot be pulled here), so the fixtures
remove every container and volume they made themselves.

For other container tests (the Helm chart's pods in motion): `raftka_image` is the built image's tag;
`start_container(env, args, volume, entrypoint=..., hostname=..., extra_hosts=...)` starts one broker
container as a pod would run it; `docker_volume()` makes a named volume that outlives its containers, so a broker
restarts on its data; `free_loopback_address()` picks an address for a broker and `broker_env(host)`
binds one to it.
"""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import docker
import pytest
from docker.models.containers import Container
from testcontainers.core.container import DockerContainer

from raftka.client.local import wait_serving

REPO = Path(__file__).resolve().parents[2]
IMAGE_TAG = f"raftka-test:{hashlib.sha256(str(REPO).encode()).hexdigest()[:12]}"
"""One tag per checkout, so test sessions of different checkouts never run each other's image."""
DATA_DIR = "/var/lib/raftka"
GRPC_PORT, RAFT_PORT, METRICS_PORT = 9092, 9093, 9644
"""The image's defaults (RAFTKA_LISTEN, RAFTKA_RAFT_LISTEN, RAFTKA_METRICS_PORT)."""
SETUP_TIMEOUT_S = 900
"""install-docker plus a cold build-image (debootstrap, wheel downloads): about 2 minutes here."""


def _run_script(*command: str) -> str:
    """A script's stdout; a failure fails the test with its output (Docker is required, not optional)."""
    try:
        done = subprocess.run([str(REPO / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True,
                              timeout=SETUP_TIMEOUT_S)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"{' '.join(command)} did not finish within {SETUP_TIMEOUT_S} s:\n{timeout.stderr!r}")
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed with status {done.returncode}:\n{done.stdout}\n{done.stderr[-5000:]}")
    return done.stdout


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the daemon scripts/install-docker made answer; DOCKER_HOST names it for the session."""
    line = _run_script("scripts/install-docker").strip().splitlines()[-1]
    host = line.removeprefix("export DOCKER_HOST=")
    with pytest.MonkeyPatch.context() as environment:
        if host:
            environment.setenv("DOCKER_HOST", host)
        environment.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
        client = docker.from_env()
        yield client
        client.close()


@pytest.fixture(scope="session")
def raftka_image(docker_client: docker.DockerClient) -> str:
    """The tag of the image scripts/build-image built from this checkout."""
    started = time.monotonic()
    tag, size = _run_script("scripts/build-image", "--tag", IMAGE_TAG).split()[-2:]
    print(f"\nscripts/build-image: {tag} {int(size) / 1e6:.0f} MB in {time.monotonic() - started:.1f} s")
    return tag


def free_loopback_address(ports: tuple[int, ...] = (GRPC_PORT, RAFT_PORT, METRICS_PORT)) -> str:
    """A loopback address outside 127.0.0.0/24 on which every one of `ports` is free now."""
    for _ in range(100):
        host = f"127.{random.randrange(100, 255)}.{random.randrange(256)}.{random.randrange(2, 255)}"
        if all(_bindable(host, port) for port in ports):
            return host
    raise RuntimeError(f"no loopback address with ports {ports} free")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def broker_env(host: str, **extra: str) -> dict[str, str]:
    """RAFTKA_* settings for a broker container bound to `host` on the image's ports."""
    return {"RAFTKA_LISTEN": f"{host}:{GRPC_PORT}", "RAFTKA_ADVERTISE": f"{host}:{GRPC_PORT}",
            "RAFTKA_RAFT_LISTEN": f"{host}:{RAFT_PORT}", "RAFTKA_METRICS_HOST": host, **extra}


@pytest.fixture(name="free_loopback_address")
def free_loopback_address_fixture() -> Callable[..., str]:
    """`free_loopback_address(ports=(9092, 9093, 9644))`: a loopback address where those ports are free."""
    return free_loopback_address


@pytest.fixture(name="broker_env")
def broker_env_fixture() -> Callable[..., dict[str, str]]:
    """`broker_env(host, **extra)`: RAFTKA_* settings binding a broker container to `host`."""
    return broker_env


class BrokerContainer:
    """One running broker container and the gRPC address it serves on."""

    def __init__(self, container: DockerContainer, address: str) -> None:
        self.container = container
        self.address = address

    @property
    def docker(self) -> Container:
        return self.container.get_wrapped_container()

    def log(self) -> str:
        return self.docker.logs().decode(errors="replace")

    def wait(self, service: str = "raftka.v1.Broker", timeout_s: float = 60) -> BrokerContainer:
        """Wait until `service` answers SERVING; fail with the log's tail if the container exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.docker.reload()
            if self.docker.status not in ("created", "running"):
                pytest.fail(f"container exited ({self.docker.status}); log tail:\n{self.log()[-3000:]}")
            if wait_serving(self.address, min(1.0, max(0.0, deadline - time.monotonic())), service):
                return self
        pytest.fail(f"{service} not SERVING at {self.address} within {timeout_s} s; log tail:\n{self.log()[-3000:]}")

    def stop(self, grace_s: int = 10) -> int:
        """`docker stop`: SIGTERM, SIGKILL after `grace_s`; the exit status (137 if it was killed)."""
        self.docker.stop(timeout=grace_s)
        return int(self.docker.wait(timeout=grace_s + 30)["StatusCode"])

    def kill(self) -> int:
        """SIGKILL: no hand-off, no flush."""
        self.docker.kill()
        return int(self.docker.wait(timeout=30)["StatusCode"])


@pytest.fixture
def docker_volume(docker_client: docker.DockerClient) -> Iterator[Callable[[], str]]:
    """`docker_volume()`: the name of a new named volume, removed after the test (after its containers)."""
    made: list[str] = []

    def make() -> str:
        made.append(docker_client.volumes.create(f"raftka-test-{uuid.uuid4().hex[:12]}").name)
        return made[-1]

    yield make
    for name in made:
        docker_client.volumes.get(name).remove(force=True)


@pytest.fixture
def start_container(raftka_image: str, docker_volume: Callable[[], str]) -> Iterator[Callable[..., BrokerContainer]]:
    """`start_container(env, args=(), volume=None, ...)` starts the image as a pod would run it: host
    network, read-only root file system, `volume` (a named volume, new if None) at the data directory.
    A pod's `command` is Docker's `entrypoint` (None keeps `raftka broker`) and its `args` are `args`;
    `hostname` is the pod's (`raftka-2`: RAFTKA_ID_FROM_HOSTNAME reads it), `extra_hosts` maps names
    to addresses (pod DNS names to loopback addresses). A pod's securityContext maps onto `user`
    ("UID:GID"; None keeps the image's), `cap_drop` and `no_new_privileges`; its volumeMount onto
    `volume_path`. Without `address` (the broker's gRPC HOST:PORT), it is RAFTKA_ADVERTISE of `env`.
    Returns once the container runs, not once it serves (`.wait()`). Every container is removed after
    the test; the volumes by `docker_volume`."""
    started: list[DockerContainer] = []

    def start(env: dict[str, str], args: tuple[str, ...] = (), volume: str | None = None, *,
              entrypoint: list[str] | None = None, hostname: str | None = None,
              extra_hosts: dict[str, str] | None = None, read_only: bool = True, user: str | None = None,
              cap_drop: list[str] | None = None, no_new_privileges: bool = False, volume_path: str = DATA_DIR,
              address: str | None = None) -> BrokerContainer:
        options: dict[str, object] = {"network_mode": "host", "read_only": read_only, "extra_hosts": extra_hosts or {},
                                      "cap_drop": cap_drop or [],
                                      "security_opt": ["no-new-privileges"] if no_new_privileges else []}
        if entrypoint is not None:
            options["entrypoint"] = entrypoint
        if hostname is not None:
            options["hostname"] = hostname
        if user is not None:
            options["user"] = user
        container = DockerContainer(raftka_image).with_envs(**env).with_kwargs(**options)
        container.with_volume_mapping(volume or docker_volume(), volume_path, "rw")
        if args:
            container.with_command(list(args))
        started.append(container.start())
        return BrokerContainer(container, address or env["RAFTKA_ADVERTISE"])

    yield start
    for container in started:
        container.stop()
