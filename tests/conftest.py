"""Shared fixtures: real `raftka broker` processes on 127.0.0.1 with data on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest

from raftka import Consumer, Record, TopicPartition
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


def drain(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60) -> dict[int, list[Record]]:
    """Every record of the topic from each partition's log start to its end, by partition."""
    consumer = Consumer(bootstrap, auto_offset_reset="earliest", request_timeout_ms=10_000)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    ends = consumer.end_offsets(consumer.assignment())
    expected = sum(end - consumer.position(tp) for tp, end in ends.items())
    records: dict[int, list[Record]] = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, records.values())) < expected and time.monotonic() < deadline:
        for record in consumer.poll(timeout_ms=500):
            records[record.partition].append(record)
    consumer.close()
    return records


@pytest.fixture(name="consume_all")
def consume_all_fixture() -> Callable[..., dict[int, list[Record]]]:
    """`consume_all(bootstrap, topic, partitions)`: the topic's records by partition."""
    return drain
