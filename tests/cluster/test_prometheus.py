"""The metrics as operators see them: the README's catalogue against what brokers export, and a real
Prometheus (Debian's package, installed by scripts/install-debian) scraping a three-broker cluster
under load with a consumer group that stops and resumes: every catalogued metric is there, lag rises
and falls, every panel of the Grafana dashboard has data, the alert rules load, and promtool accepts
every broker's /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from raftka import Admin, Consumer, Producer
from raftka.client.local import LocalBroker, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "raftka" / "dashboards" / "raftka.json"
RULES = ROOT / "helm" / "raftka" / "alerts" / "raftka.rules.yml"
RATE_INTERVAL = "10s"
"""What Grafana would put for $__rate_interval with a 1 s scrape interval and a short time range."""


def catalogue() -> dict[str, tuple[str, frozenset[str]]]:
    """The README's metric catalogue: name -> (type, label names)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Metric catalogue"):text.index("### Dashboard")]
    rows = {}
    for line in table.splitlines():
        if match := re.match(r"\| `(\w+)` \| (\w+) \|([^|]*)\|", line):
            name, kind, labels = match.groups()
            rows[name] = (kind, frozenset(label.strip() for label in labels.split(",") if label.strip()))
    return rows


def exported(body: str) -> dict[str, tuple[str, frozenset[str] | None]]:
    """A /metrics body: name -> (type, label names of its samples, None when it has none)."""
    families = {}
    for family in text_string_to_metric_families(body):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(label for sample in family.samples for label in sample.labels if label != "le")
        families[name] = (family.type, labels if family.samples else None)
    return families


def scrape(broker: LocalBroker) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10).read().decode()


def test_the_catalogue_is_what_a_broker_exports(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("listed")
    with Producer(broker.address) as producer:
        producer.send("listed", b"x").result(timeout=10)
    with Consumer(broker.address, group_id="cataloguers", topics=["listed"], auto_offset_reset="earliest") as consumer:
        wait_until(lambda: consumer.poll(timeout_ms=200), "the consumer read the record")
        consumer.commit()
    table = catalogue()
    families = exported(scrape(broker))
    assert sorted(families) == sorted(table), "the README's catalogue and the exported metrics differ"
    for name, (kind, labels) in families.items():
        assert kind == table[name][0], f"{name} is a {kind}, the README says {table[name][0]}"
        assert labels is None or labels == table[name][1], f"{name} has labels {sorted(labels)}"
    assert families["raftka_group_lag_records"][1] == frozenset({"group", "topic"})


def samples(broker: LocalBroker) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in scrape(broker).splitlines()
            if line and not line.startswith("#")}


def total(brokers: list[LocalBroker], series: str) -> float:
    """`series` summed over the brokers that are up: what `sum(...)` in Prometheus gives."""
    return sum(samples(broker).get(series, 0.0) for broker in brokers if broker.alive())


def test_partition_health_is_counted_once_per_partition(start_cluster) -> None:
    """A broker down: its partitions are under-replicated once each (their leaders count them), and
    elections make new leaders; back, the balancer transfers leadership to it. Two brokers down: the
    survivor counts every partition leaderless once."""
    brokers = start_cluster(3, "--leader-balance-delay-ms", "500")
    with Admin(brokers[0].address) as admin:
        admin.create_topic("health", partitions=3, replication_factor=3)
    under = 'raftka_partitions_under_replicated{topic="health"}'
    leaderless = 'raftka_partitions_leaderless{topic="health"}'
    elections = 'raftka_raft_leaderships_won_total{cause="election"}'
    transfers = 'raftka_raft_leaderships_won_total{cause="transfer"}'
    wait_until(lambda: total(brokers, 'raftka_partition_leaders') == 3, "every partition led")
    assert total(brokers, under) == 0 and total(brokers, leaderless) == 0
    elected = total(brokers[:2], elections)
    brokers[2].kill()
    wait_until(lambda: total(brokers, under) == 3, "each partition counted under-replicated once")
    assert total(brokers, leaderless) == 0
    assert total(brokers, elections) > elected, "the partitions broker 3 led elected new leaders"
    brokers[2].start()
    wait_until(lambda: total(brokers, under) == 0, "the partitions are in sync again")
    wait_until(lambda: samples(brokers[2]).get(transfers, 0) >= 1, "the balancer handed leadership back")
    brokers[1].kill()
    brokers[2].kill()
    wait_until(lambda: total(brokers, leaderless) == 3, "each partition counted leaderless once")
    assert total(brokers, under) == 0, "no broker leads a partition any more"


class Prometheus:
    """A Prometheus server scraping the brokers every second, with the alert rules loaded."""

    def __init__(self, binary: str, directory: Path, brokers: list[LocalBroker]) -> None:
        config = directory / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "raftka", "static_configs": [
                {"targets": [f"127.0.0.1:{broker.metrics_port}" for broker in brokers]}]}]}))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = directory / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"], stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.ready, "Prometheus is ready", timeout_s=60, interval_s=0.2)

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for_data(self, queries: set[str], what: str, timeout_s: float = 30) -> None:
        """Wait until every query has a non-empty result; fail naming those that have none."""
        empty = set(queries)

        def answered() -> bool:
            empty.difference_update({query for query in empty if self.query(query)})
            return not empty

        try:
            wait_until(answered, f"every one of the {what} has data", timeout_s=timeout_s, interval_s=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; empty: {sorted(empty)}") from None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus_binaries() -> tuple[str, str]:
    subprocess.run([str(ROOT / "scripts" / "install-debian"), "prometheus"], check=True, timeout=600)
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus is not None and promtool is not None
    return prometheus, promtool


class GroupReader:
    """A consumer of group `lagging` in a thread, committing after every poll, until stopped."""

    def __init__(self, bootstrap: str) -> None:
        self.read = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(bootstrap,), daemon=True)
        self._thread.start()

    def _run(self, bootstrap: str) -> None:
        with Consumer(bootstrap, group_id="lagging", topics=["orders"], auto_offset_reset="earliest",
                      enable_auto_commit=False) as consumer:
            while not self._stop.is_set():
                records = consumer.poll(timeout_ms=200)
                if records:
                    consumer.commit()
                    self.read += len(records)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()


def panel_queries() -> Iterator[str]:
    """The query of every panel, with the variables substituted as Grafana would for "All"."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert {panel["title"] for panel in panels if panel["type"] == "row"} == {
        "Throughput", "Latency", "Consumer lag", "Replication health", "Storage"}
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel.get("targets", []):
            yield (target["expr"].replace("$topic", ".*").replace("$group", ".*")
                   .replace("$__rate_interval", RATE_INTERVAL))


def test_prometheus_scrapes_a_cluster_under_load(start_cluster, ack_recorder, tmp_path, prometheus_binaries) -> None:
    prometheus_binary, promtool = prometheus_binaries
    brokers = start_cluster(3)
    bootstrap = ",".join(broker.address for broker in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("orders", partitions=3, replication_factor=3)
    prometheus = Prometheus(prometheus_binary, tmp_path, brokers)
    load = ack_recorder(bootstrap, "orders", workers=1, pace_s=0.1, keyed=True)
    reader = GroupReader(bootstrap)
    try:
        wait_until(lambda: reader.read > 100, "the group read records")
        lag = 'sum(raftka_group_lag_records{group="lagging", topic="orders"})'
        wait_until(lambda: prometheus.value(lag) is not None, "Prometheus has the group's lag")

        prometheus.wait_for_data({f"{name}_count" if kind == "histogram" else name
                                  for name, (kind, _) in catalogue().items()}, "catalogued metrics")

        reader.stop()
        wait_until(lambda: (prometheus.value(lag) or 0) >= 300, "the lag rises while the group reads nothing")
        peak = prometheus.value(lag)
        assert peak is not None
        reader = GroupReader(bootstrap)
        wait_until(lambda: (prometheus.value(lag) or peak) < peak / 3,
                   f"the lag falls from {peak:g} once the group reads again")
        assert prometheus.value('sum(raftka_group_members{group="lagging"})') == 1

        prometheus.wait_for_data(set(panel_queries()), "dashboard panel queries")

        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        assert len(rules) == 6 and all(rule["health"] == "ok" for rule in rules), rules

        for broker in brokers:
            check = subprocess.run([promtool, "check", "metrics"], input=scrape(broker), capture_output=True,
                                   text=True, timeout=60)
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        reader.stop()
        load.stop()
        prometheus.stop()
    assert not load.failures
