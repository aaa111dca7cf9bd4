"""Shared fixtures: real `raftka broker` processes on 127.0.0.1 with data on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest

from raftka.client.local import LocalBroker, free_port, plan
from raftka.proto import api_pb2_grpc


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., list[LocalBroker]]]:
    """Start a cluster of N brokers (extra `raftka broker` flags allowed); stopped after the test."""
    started: list[LocalBroker] = []

    def start(brokers: int = 1, *extra_args: str) -> list[LocalBroker]:
        layout = plan(brokers, tmp_path / f"cluster-{len(started)}", [free_port() for _ in range(brokers)],
                      metrics_ports=[free_port() for _ in range(brokers)], extra_args=extra_args)
        started.extend(layout)
        for broker in layout:
            broker.spawn()
        for broker in layout:
            broker.wait()
        return layout

    yield start
    for broker in started:
        if broker.alive():
            assert broker.stop() == 0, broker.log()[-3000:]


@pytest.fixture
def start_broker(start_cluster: Callable[..., list[LocalBroker]]) -> Callable[..., LocalBroker]:
    """Start a one-broker cluster with extra `raftka broker` flags."""
    return lambda *extra_args: start_cluster(1, *extra_args)[0]


@pytest.fixture
def broker(start_broker: Callable[..., LocalBroker]) -> LocalBroker:
    return start_broker()


@pytest.fixture
def stubs(broker: LocalBroker) -> Iterator[tuple[api_pb2_grpc.BrokerStub, api_pb2_grpc.AdminStub]]:
    with grpc.insecure_channel(broker.address) as channel:
        yield api_pb2_grpc.BrokerStub(channel), api_pb2_grpc.AdminStub(channel)


@pytest.fixture
def cli_env(broker: LocalBroker) -> dict[str, str]:
    return {**os.environ, "RAFTKA_BOOTSTRAP": broker.address}


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """A function returning an unused TCP port on 127.0.0.1."""
    return free_port
