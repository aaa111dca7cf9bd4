"""Raftka's container image, run by real Docker: a non-root broker on a read-only root file system
serves, keeps acknowledged records on its volume across containers, and stops gracefully on
`docker stop` (SIGTERM reaches the broker, which is PID 1 through the exec-form entrypoint)."""

from __future__ import annotations

import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import docker
import pytest

from raftka import Admin, Producer

REPO = Path(__file__).resolve().parents[2]
RECORDS = 200
STOP_GRACE_S = 5
"""`docker stop -t 5`: a one-broker cluster stops well within it, not after the hand-off timeout (5 s)."""

pytestmark = pytest.mark.timeout(900)  # the first test also sets up Docker and builds the image (cold: ~2 min)


def test_the_image_describes_itself(docker_client: docker.DockerClient, raftka_image: str) -> None:
    """OCI labels, the broker as entrypoint in exec form, a non-root user, the data volume, the ports,
    and RAFTKA_* defaults that make a plain `docker run` a one-broker cluster listening on every
    interface."""
    config = docker_client.images.get(raftka_image).attrs["Config"]
    labels = config["Labels"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert labels["org.opencontainers.image.title"] == "raftka"
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head.strip()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"]
    assert config["Entrypoint"] == ["raftka", "broker"]
    assert config["User"] == "10001:10001"
    assert set(config["Volumes"]) == {"/var/lib/raftka"}
    assert set(config["ExposedPorts"]) == {"9092/tcp", "9093/tcp", "9644/tcp"}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert (env["RAFTKA_LISTEN"], env["RAFTKA_RAFT_LISTEN"]) == ("0.0.0.0:9092", "0.0.0.0:9093")
    assert (env["RAFTKA_METRICS_HOST"], env["RAFTKA_METRICS_PORT"]) == ("0.0.0.0", "9644")
    assert env["RAFTKA_DATA_DIR"] == "/var/lib/raftka"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_a_read_only_non_root_broker_serves_stops_gracefully_and_keeps_its_records(
        start_container: Callable[..., Any], docker_volume: Callable[[], str], free_loopback_address: Callable[[], str],
        broker_env: Callable[..., dict[str, str]], consume_all: Callable[..., dict]) -> None:
    host = free_loopback_address()
    volume = docker_volume()
    started = time.monotonic()
    broker = start_container(broker_env(host), volume=volume).wait()
    print(f"\ncontainer start to raftka.v1.Broker SERVING: {time.monotonic() - started:.2f} s")

    attrs = broker.docker.attrs
    assert attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert broker.container.exec(["id", "-u"]).output.decode().strip() == "10001"
    assert broker.container.exec(["cat", "/proc/1/cmdline"]).output.split(b"\0")[1:3] == [
        b"/opt/raftka/bin/raftka", b"broker"], "the broker is PID 1, so docker's SIGTERM reaches it"
    assert broker.container.exec(["touch", "/opt/raftka/written"]).exit_code != 0, "the root is read-only"

    with Admin(broker.address) as admin:
        admin.create_topic("in-a-container", partitions=2)
    with Producer(broker.address, linger_ms=1) as producer:
        futures = [producer.send("in-a-container", f"record-{i}".encode(), key=str(i).encode())
                   for i in range(RECORDS)]
        acknowledged = sorted((f.result().partition, f.result().offset) for f in futures)
    found = consume_all(broker.address, "in-a-container", 2)
    assert sorted((r.partition, r.offset) for records in found.values() for r in records) == acknowledged

    assert broker.stop(grace_s=STOP_GRACE_S) == 0, broker.log()[-3000:]
    log = broker.log()
    assert "broker stopping id=1" in log and "broker stopped id=1 exit_status=0" in log, log[-3000:]
    assert "leadership handed off broker=1" in log, log[-3000:]

    again = start_container(broker_env(host), volume=volume).wait()
    assert "data directory initialised" not in again.log(), "the new container reuses the volume's data"
    found_again = consume_all(again.address, "in-a-container", 2)
    assert {p: [(r.offset, r.value) for r in records] for p, records in found_again.items()} == \
        {p: [(r.offset, r.value) for r in records] for p, records in found.items()}
    assert sum(map(len, found_again.values())) == RECORDS


def test_a_pod_takes_its_id_from_its_host_name_and_the_image_runs_the_cli(
        start_container: Callable[..., Any], free_loopback_address: Callable[[], str],
        broker_env: Callable[..., dict[str, str]]) -> None:
    """A StatefulSet's pod `raftka-2` is broker 3 (RAFTKA_ID_FROM_HOSTNAME), and the image serves as a
    client too, as a `helm test` pod does: `raftka` with the client's commands as the entrypoint."""
    host = free_loopback_address()
    broker = start_container(broker_env(host, RAFTKA_ID_FROM_HOSTNAME="1"), hostname="raftka-2").wait()
    assert "broker started id=3 " in broker.log(), broker.log()[-3000:]
    cli = start_container({"RAFTKA_BOOTSTRAP": broker.address}, ("topic", "create", "from-a-pod", "--partitions", "2"),
                          entrypoint=["raftka"], address=broker.address)
    assert cli.docker.wait(timeout=60)["StatusCode"] == 0, cli.log()
    with Admin(broker.address) as admin:
        assert len(admin.describe_topic("from-a-pod").partitions) == 2
