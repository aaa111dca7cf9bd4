"""The failure contract on a real broker (`replication.driver`): a Raft group whose storage fails
stops alone, fails its waiters with STORAGE_ERROR, is reported, and is reopened from its durable
state, while every other group on the broker keeps committing. The fault comes from a failpoint
(`replication.failpoints`) armed in the broker's environment."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest

from raftka.client.local import LocalBroker
from raftka.errors import METADATA_CODE, rpc_metadata
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.batch import encode_batch

PARTITIONS = 20
FAILING = 13
"""A partition number no internal topic has (`__consumer_offsets` has 8), so `/13$` matches only it."""


def produce(stub: api_pb2_grpc.BrokerStub, partition: int, value: bytes) -> api_pb2.ProduceResponse:
    return stub.Produce(api_pb2.ProduceRequest(topic="t", partition=partition, batches=encode_batch(
        [(None, value, [], 1_700_000_000_000)]), timeout_ms=10_000), timeout=15)


def test_a_storage_failure_stops_one_group_and_the_others_keep_committing(
        monkeypatch: pytest.MonkeyPatch, start_cluster: Callable[..., list[LocalBroker]]) -> None:
    monkeypatch.setenv("RAFTKA_FAILPOINTS", f"partition-append:1:/{FAILING}$")
    [broker] = start_cluster(1)
    with grpc.insecure_channel(broker.address) as channel:
        stub, admin = api_pb2_grpc.BrokerStub(channel), api_pb2_grpc.AdminStub(channel)
        admin.CreateTopic(api_pb2.CreateTopicRequest(name="t", partitions=PARTITIONS, replication_factor=1),
                          timeout=10)
        deadline = time.monotonic() + 30
        while admin.DescribeTopic(api_pb2.DescribeTopicRequest(name="t"), timeout=10).topic.partitions[
                FAILING].leader_id != broker.broker_id:
            assert time.monotonic() < deadline, "the new topic got no leader"
            time.sleep(0.05)

        with pytest.raises(grpc.RpcError) as failed:
            produce(stub, FAILING, b"refused")
        assert rpc_metadata(failed.value)[METADATA_CODE] == "STORAGE_ERROR"
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert broker.metric_total('raftka_raft_group_failures_total{stage="storage"}') == 1

        for partition in range(PARTITIONS):
            if partition != FAILING:
                assert produce(stub, partition, b"meanwhile").base_offset == 0

        deadline = time.monotonic() + 60
        while True:
            try:
                response = produce(stub, FAILING, b"after the reopen")
                break
            except grpc.RpcError as exc:
                assert rpc_metadata(exc)[METADATA_CODE] in ("STORAGE_ERROR", "NOT_LEADER"), exc
                assert time.monotonic() < deadline, "the failed group was never reopened"
                time.sleep(0.1)
        assert response.base_offset == 0, "the refused record was never written"
        assert broker.metric_total("raftka_raft_groups_stopped") == 0
        assert broker.metric_total("raftka_raft_group_failures_total") == 1

    log = broker.log()
    assert log.count("raft group failed group=") == 1
    assert log.count("raft group reopened group=") == 1
    assert "ReadyContractError" not in log


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small disk needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_broker_with_status_1_and_loses_nothing_acknowledged(
        small_disk: Path, free_port: Callable[[], int], consume_all: Callable[..., dict[int, list]]) -> None:
    """A real storage failure of the shared write (ENOSPC): the broker fails what is waiting, exits
    with status 1, and once given room again serves every record it acknowledged."""
    broker = LocalBroker(1, f"127.0.0.1:{free_port()}", small_disk).start()
    try:
        with grpc.insecure_channel(broker.address) as channel:
            stub, admin = api_pb2_grpc.BrokerStub(channel), api_pb2_grpc.AdminStub(channel)
            admin.CreateTopic(api_pb2.CreateTopicRequest(name="t", partitions=1, replication_factor=1), timeout=10)
            value = os.urandom(64 * 1024)
            acknowledged, errors = [], []
            deadline = time.monotonic() + 120
            while broker.alive():
                assert time.monotonic() < deadline, "the disk never filled up"
                try:
                    response = stub.Produce(api_pb2.ProduceRequest(topic="t", partition=0, batches=encode_batch(
                        [(None, value, [], 1_700_000_000_000)] * 8), timeout_ms=10_000), timeout=15)
                except grpc.RpcError as exc:
                    errors.append(exc)
                    continue
                acknowledged.append(response.base_offset)
        assert broker.process is not None and broker.process.wait(timeout=30) == 1
        assert rpc_metadata(errors[0])[METADATA_CODE] == "STORAGE_ERROR", errors[0]
        assert all(e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) for e in errors[1:]), \
            "requests that reach a broker on its way out end with the connection"
        assert "broker stopping after a storage failure" in broker.log()
        assert acknowledged, "nothing was acknowledged before the disk filled up"
        subprocess.run(["mount", "-o", "remount,size=512m", str(small_disk)], check=True)
        broker.start()
        records = consume_all(broker.address, "t", 1)[0]
        assert acknowledged == list(range(0, 8 * len(acknowledged), 8))
        assert [(r.offset, r.value) for r in records[: 8 * len(acknowledged)]] == [
            (offset, value) for offset in range(8 * len(acknowledged))]
    finally:
        broker.stop()
