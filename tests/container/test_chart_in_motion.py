"""The Helm chart in motion without a Kubernetes API server: helm/raftka rendered with `helm template`,
its StatefulSet's pods started from the built image exactly as rendered, then killed, restarted,
rolled and scaled as Kubernetes would (issue #20, tests 2 and 3).

`kubelet()` turns a rendered pod spec into start_container's arguments as the kubelet would: the image's
entrypoint unless the spec has a `command`, `args` and `env` values with Kubernetes' $(VAR) expansion,
downward-API fieldRefs filled (the pod's name and namespace, its IP, its node), the securityContext's
uid:gid, read-only root and dropped capabilities, and one Docker volume per pod at the volumeMount path
(a PersistentVolumeClaim: it outlives the pod's containers; Docker fills a new volume from the image's
/var/lib/raftka, owned by 10001, the ownership the chart's fsGroup gives a claim). Each pod's IP is a
loopback address of its own, so the chart's fixed ports never collide under host networking; probes
and the Service reach a pod there.

Cluster DNS is /etc/hosts: every container gets `extra_hosts` mapping each pod's name under the headless
Service to its address, and the client Service's name to one running pod, each in turn (a ClusterIP
balances connections over ready pods). The names of every pod the test will ever run (pods 3 and 4 of
the scale-up too) are mapped from the start; a name whose pod is not running refuses connections, as
an unresolvable one would. A container restarted in its pod (the SIGKILL scenario) keeps the pod's
IP; a pod recreated by the rolling update gets a new one, and `reschedule()` rewrites every running
container's /etc/hosts in place, as the headless Service's DNS record changes.

Clients run INSIDE containers of the image, as the chart's own `helm test` Pod does (its spec, with
another command): the brokers advertise pod DNS names that only those /etc/hosts resolve. Editing the
host's /etc/hosts instead would reach every process on this shared machine and leave entries behind if
the test process died. The producer is tests/container/pod_producer.py (one JSON line per acknowledged
record); the consumer and admin steps are the `raftka` CLI with --format json.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from raftka import Record
from helm_chart import FULLNAME, NAMESPACE, Helm, render
from waiting import wait_until

from .conftest import DATA_DIR, BrokerContainer, free_loopback_address

PRODUCER = (Path(__file__).parent / "pod_producer.py").read_text()
CLUSTER_DOMAIN = "cluster.local"
"""The chart's default clusterDomain: the suffix of every name below."""
MAX_PODS = 5
TOPIC, PARTITIONS = "orders", 3
CLIENT_TIMEOUT_S = 120

pytestmark = pytest.mark.timeout(900)  # the first container test of a session also builds the image


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of `$(VAR)` in command, args and env values: a defined VAR is replaced,
    an undefined one is left as written, `$$` is a literal `$` (so `$$(VAR)` stays `$(VAR)`)."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return "$" if name is None else env.get(name, match.group(0))
    return re.sub(r"\$\$|\$\(([^)]*)\)", replace, text)


def kubelet(spec: dict[str, Any], *, name: str, ip: str, hosts: dict[str, str], volume: str | None = None,
            node: str = "node-1") -> dict[str, Any]:
    """start_container's keyword arguments for the one container of pod spec `spec` running as pod
    `name` at `ip` in NAMESPACE on `node`, with `hosts` as its cluster DNS and `volume` (a Docker
    volume) as its one volumeMount. env entries are resolved in order, each value seeing only the
    ones before it; command and args see all of them."""
    [container] = spec["containers"]
    fields = {"metadata.name": name, "metadata.namespace": NAMESPACE, "status.podIP": ip, "spec.nodeName": node}
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = expand(variable["value"], env)
        else:
            path = variable["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise ValueError(f"this kubelet fills fieldRefs {sorted(fields)}, not {path!r}")
            env[variable["name"]] = fields[path]
    security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    mounts = container.get("volumeMounts", [])
    assert len(mounts) <= 1, f"start_container mounts one volume, the spec has {mounts}"
    probe = container.get("readinessProbe", {}).get("grpc")
    return {
        "env": env,
        "args": tuple(expand(arg, env) for arg in container.get("args", [])),
        "entrypoint": [expand(part, env) for part in container["command"]] if "command" in container else None,
        "hostname": name,
        "extra_hosts": hosts,
        "read_only": security.get("readOnlyRootFilesystem", False),
        "user": f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}",
        "cap_drop": security.get("capabilities", {}).get("drop", []),
        "no_new_privileges": security.get("allowPrivilegeEscalation") is False,
        "volume": volume,
        "volume_path": mounts[0]["mountPath"] if mounts else DATA_DIR,
        "address": f"{ip}:{probe['port']}" if probe else ip,
    }


class ChartCluster:
    """The rendered StatefulSet's pods as containers, and client pods shaped like the chart's test Pod."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]], start_container: Callable[..., BrokerContainer],
                 docker_volume: Callable[[], str]) -> None:
        self.statefulset = objects[("StatefulSet", FULLNAME)]
        self.test_pod = objects[("Pod", f"{FULLNAME}-test")]
        service = objects[("Service", FULLNAME)]["metadata"]["name"]
        self._start_container = start_container
        self._docker_volume = docker_volume
        self.addresses = [free_loopback_address() for _ in range(MAX_PODS)]
        self.volumes: dict[int, str] = {}
        self.pods: dict[int, BrokerContainer] = {}
        """Running pods by ordinal."""
        self.clients: list[BrokerContainer] = []
        headless = self.statefulset["spec"]["serviceName"]
        self._names = [f"{FULLNAME}-{i}.{headless}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}" for i in range(MAX_PODS)]
        self._service = f"{service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
        self._turn = itertools.count()

    @property
    def template(self) -> dict[str, Any]:
        return self.statefulset["spec"]["template"]

    def hosts(self) -> dict[str, str]:
        """Cluster DNS for a new container: every pod's name, and the Service's name for the next running pod."""
        running = sorted(self.pods) or [0]
        target = running[next(self._turn) % len(running)]
        return {**dict(zip(self._names, self.addresses)), self._service: self.addresses[target]}

    def start(self, *ordinals: int) -> None:
        """Start pods (each on its own volume, made at its first start), then wait until each is ready and live."""
        started = []
        for ordinal in ordinals:
            if ordinal not in self.volumes:
                self.volumes[ordinal] = self._docker_volume()
            started.append((time.monotonic(), self._start_container(**kubelet(
                self.template["spec"], name=f"{FULLNAME}-{ordinal}", ip=self.addresses[ordinal], hosts=self.hosts(),
                volume=self.volumes[ordinal]))))
        [container] = self.template["spec"]["containers"]
        probes = {probe: container[probe]["grpc"]["service"] for probe in ("readinessProbe", "livenessProbe")}
        for ordinal, (since, pod) in zip(ordinals, started):
            self.pods[ordinal] = pod.wait(probes["readinessProbe"], timeout_s=120)
            print(f"pod {ordinal}: container start to ready {time.monotonic() - since:.1f} s")
            pod.wait(probes["livenessProbe"], timeout_s=10)

    def stop(self, ordinal: int) -> int:
        """A pod deleted: SIGTERM, SIGKILL after the rendered terminationGracePeriodSeconds; the exit status."""
        return self.pods.pop(ordinal).stop(grace_s=self.template["spec"]["terminationGracePeriodSeconds"])

    def kill(self, ordinal: int) -> int:
        return self.pods.pop(ordinal).kill()

    def reschedule(self, ordinal: int) -> None:
        """Give a stopped pod a new IP, as a StatefulSet's pod recreated by a rolling update gets, and
        update cluster DNS: each container's /etc/hosts (Docker's file, bind-mounted) rewritten in place."""
        old, self.addresses[ordinal] = self.addresses[ordinal], free_loopback_address()
        for pod in [*self.pods.values(), *self.clients]:
            pod.docker.reload()
            path = Path(pod.docker.attrs["HostsPath"])
            lines = [f"{self.addresses[ordinal]}\t{line.split(maxsplit=1)[1]}" if line.split()[:1] == [old] else line
                     for line in path.read_text().splitlines()]
            with path.open("r+") as hosts:
                hosts.truncate()
                hosts.write("\n".join(lines) + "\n")

    def pod(self, spec: dict[str, Any], name: str) -> BrokerContainer:
        """Start a pod that is not a broker (a client, a Job's, the test Pod) from its rendered spec."""
        self.clients.append(self._start_container(**kubelet(spec, name=name, ip=free_loopback_address(),
                                                            hosts=self.hosts())))
        return self.clients[-1]

    def client(self, command: list[str]) -> BrokerContainer:
        """Start a client pod: the chart's test Pod with `command`, its Service name mapped to a running pod."""
        [container] = self.test_pod["spec"]["containers"]
        spec = {**self.test_pod["spec"], "containers": [{**container, "command": command}]}
        return self.pod(spec, f"client-{next(self._turn)}")

    def run(self, command: list[str]) -> str:
        """Run a client pod to completion: its stdout; the test fails if it exits non-zero."""
        status, out = finish(self.client(command))
        assert status == 0, f"{command} exited {status}:\n{out}"
        return out

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.run(["raftka", *args, "--format", "json"]))

    def start_producer(self) -> BrokerContainer:
        return self.client(["python3", "-c", PRODUCER, TOPIC])

    def consume_all(self) -> dict[int, list[dict[str, Any]]]:
        """Every record of TOPIC (as many as its high watermarks say), read through the Service, by partition."""
        total = sum(p["high_watermark"] for p in self.cli_json("topic", "describe", TOPIC)["partitions"])
        lines = self.run(["raftka", "consume", TOPIC, "--from-beginning", "--format", "json", "--max-messages",
                          str(total), "--timeout-ms", "20000"]).splitlines()
        found: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
        for record in map(json.loads, lines):
            found[record["partition"]].append(record)
        return found


def stdout(pod: BrokerContainer) -> str:
    return pod.docker.logs(stdout=True, stderr=False).decode()


def finish(pod: BrokerContainer) -> tuple[int, str]:
    """Wait for a pod's container to exit: its status, and its stdout (or, on failure, its whole log)."""
    status = int(pod.docker.wait(timeout=CLIENT_TIMEOUT_S)["StatusCode"])
    return status, stdout(pod) if status == 0 else pod.log()[-3000:]


def acknowledged(producer: BrokerContainer) -> tuple[list[tuple[int, int, bytes]], list[str]]:
    """The producer pod's acknowledged records (partition, offset, value) and the errors it reported."""
    lines = [json.loads(line) for line in stdout(producer).splitlines()]
    return ([(line["partition"], line["offset"], line["value"].encode()) for line in lines if "error" not in line],
            [line["error"] for line in lines if "error" in line])


def wait_for_acks(producer: BrokerContainer, count: int) -> None:
    """Wait until the producer pod has `count` records acknowledged; fail at once if it exits."""
    def enough() -> bool:
        producer.docker.reload()
        assert producer.docker.status == "running", f"the producer exited:\n{producer.log()[-3000:]}"
        return len(acknowledged(producer)[0]) >= count
    wait_until(enough, f"{count} records acknowledged", timeout_s=120, interval_s=0.2)


def stop_producer(producer: BrokerContainer) -> list[tuple[int, int, bytes]]:
    """SIGTERM the producer pod (it flushes, then exits 0); every record it sent, all acknowledged."""
    assert producer.stop(grace_s=60) == 0, producer.log()[-3000:]
    acks, errors = acknowledged(producer)
    assert not errors, errors[:5]
    return acks


def records(found: dict[int, list[dict[str, Any]]]) -> dict[int, list[Record]]:
    """`raftka consume --format json` lines as the Records tests/conftest.py's checks take."""
    return {p: [Record(TOPIC, p, r["offset"], None, r["value"].encode(), (), r["timestamp"]) for r in lines]
            for p, lines in found.items()}


@pytest.fixture
def chart_cluster(helm: Helm, start_container: Callable[..., BrokerContainer],
                  docker_volume: Callable[[], str]) -> Iterator[ChartCluster]:
    """A cluster of the chart rendered with default values: its 3 pods ready, topic TOPIC created through
    the client Service (replication factor 3)."""
    cluster = ChartCluster(render(helm), start_container, docker_volume)
    started = time.monotonic()
    replicas = cluster.statefulset["spec"]["replicas"]
    cluster.start(*range(replicas))
    print(f"\n{replicas} pods ready in {time.monotonic() - started:.1f} s")
    cluster.cli_json("topic", "create", TOPIC, "--partitions", str(PARTITIONS), "--replication-factor", "3")
    yield cluster


def test_kubelet_expands_args_and_env_and_fills_field_refs_as_kubernetes_does(helm: Helm) -> None:
    assert expand("$(A):1 $(B) $$(A) $$ $x $(A", {"A": "a"}) == "a:1 $(B) $(A) $ $x $(A"
    spec = render(helm)[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]
    hosts = {"somewhere": "127.9.9.9"}
    pod = kubelet(spec, name=f"{FULLNAME}-2", ip="127.1.2.3", hosts=hosts, volume="v2", node="node-7")
    domain = f"{FULLNAME}-headless.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
    assert pod["env"] == {"POD_NAME": f"{FULLNAME}-2", "POD_IP": "127.1.2.3", "RAFTKA_BOOTSTRAP": "127.1.2.3:9092"}
    assert pod["args"][:4] == ("--id-from-name=rk-raftka-2", "--listen=127.1.2.3:9092",
                               f"--advertise={FULLNAME}-2.{domain}:9092", "--raft-listen=127.1.2.3:9093")
    assert "--metrics-host=127.1.2.3" in pod["args"] and not [arg for arg in pod["args"] if "$(" in arg]
    assert pod["entrypoint"] is None, "no command: the image's entrypoint, `raftka broker`"
    assert (pod["hostname"], pod["extra_hosts"], pod["address"]) == (f"{FULLNAME}-2", hosts, "127.1.2.3:9092")
    assert (pod["user"], pod["read_only"], pod["cap_drop"], pod["no_new_privileges"]) == ("10001:10001", True,
                                                                                          ["ALL"], True)
    assert (pod["volume"], pod["volume_path"]) == ("v2", "/var/lib/raftka")

    ordered = {"containers": [{"env": [
        {"name": "LATER", "value": "$(NODE)-$(EARLY)"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "EARLY", "value": "$(NS)/$(NODE)"}], "command": ["echo", "$(LATER)", "$(EARLY)"]}],
        "securityContext": {"runAsUser": 5}}
    pod = kubelet(ordered, name="p", ip="127.0.0.9", hosts={})
    assert pod["env"]["LATER"] == "$(NODE)-$(EARLY)", "an env value sees only the variables defined before it"
    assert pod["entrypoint"] == ["echo", "$(NODE)-$(EARLY)", f"{NAMESPACE}/node-1"]
    assert pod["user"] == "5:5" and pod["address"] == "127.0.0.9"
    with pytest.raises(ValueError, match="not 'status.hostIP'"):
        kubelet({"containers": [{"env": [{"name": "H", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]}],
                 "securityContext": {"runAsUser": 1}}, name="p", ip="127.0.0.9", hosts={})


def test_produce_through_the_service_sigkill_a_leader_and_restart_it_on_its_volume(
        chart_cluster: ChartCluster, exactly_once: Callable[..., None]) -> None:
    """Scenarios 1 and 2: a producer pod writes through the client Service while the leader of partition
    0 is SIGKILLed and its container restarted on the same volume; a consumer pod reads everything back
    through the Service: each acknowledged record exactly once, in order, nothing else."""
    cluster = chart_cluster
    pod = cluster.pods[0].docker.attrs
    assert (pod["Config"]["User"], pod["HostConfig"]["ReadonlyRootfs"], pod["HostConfig"]["CapDrop"]) == (
        "10001:10001", True, ["ALL"]), "the rendered securityContext reaches Docker"
    started = time.monotonic()
    producer = cluster.start_producer()
    wait_for_acks(producer, 300)
    print(f"scenario 1, producer pod to 300 records acknowledged through the Service: "
          f"{time.monotonic() - started:.1f} s")

    killed = time.monotonic()
    leader = cluster.cli_json("topic", "describe", TOPIC)["partitions"][0]["leader"]
    ordinal = leader - 1
    assert cluster.kill(ordinal) == 137
    before = len(acknowledged(producer)[0])
    cluster.start(ordinal)
    assert "data directory initialised" not in cluster.pods[ordinal].log(), "the pod restarted on its volume"
    wait_for_acks(producer, before + 300)
    acks = stop_producer(producer)
    found = cluster.consume_all()
    exactly_once(acks, records(found))
    assert sum(map(len, found.values())) == len(acks), "the log holds records never acknowledged"
    print(f"scenario 2, SIGKILL of pod {ordinal} (leader of {TOPIC}/0), restart, {len(acks)} records checked: "
          f"{time.monotonic() - killed:.1f} s")


def test_a_rolling_restart_under_a_producer_loses_nothing(chart_cluster: ChartCluster,
                                                          exactly_once: Callable[..., None]) -> None:
    """Scenario 3: the StatefulSet controller's rolling update, highest ordinal first: each pod stopped
    (SIGTERM, exit 0 within the grace period), recreated on its volume with a new IP under the same DNS
    name, and ready before the next, while a producer pod writes through the Service: no producer
    error, nothing lost or doubled, and every replica back in sync."""
    cluster = chart_cluster
    producer = cluster.start_producer()
    wait_for_acks(producer, 100)
    started = time.monotonic()
    for ordinal in sorted(cluster.pods, reverse=True):
        before, pod, step = len(acknowledged(producer)[0]), cluster.pods[ordinal], time.monotonic()
        assert cluster.stop(ordinal) == 0, pod.log()[-3000:]
        stopped = time.monotonic()
        cluster.reschedule(ordinal)
        cluster.start(ordinal)
        ready = time.monotonic()
        wait_for_acks(producer, before + 100)
        print(f"pod {ordinal}: stopped in {stopped - step:.1f} s, ready {ready - stopped:.1f} s later, 100 more "
              f"records acknowledged {time.monotonic() - ready:.1f} s later")
    rolled = time.monotonic() - started
    wait_until(lambda: all(len(p["in_sync_replicas"]) == 3 for p in cluster.cli_json("topic", "describe", TOPIC)[
        "partitions"]), "every replica in sync again, each broker reaching the others at their new addresses",
        timeout_s=60, interval_s=0.5)
    acks = stop_producer(producer)
    found = cluster.consume_all()
    exactly_once(acks, records(found))
    assert sum(map(len, found.values())) == len(acks), "the log holds records never acknowledged"
    print(f"scenario 3, rolling restart of 3 pods under a producer: {rolled:.1f} s, {len(acks)} records checked")


def test_scale_to_five_pods_then_balance_and_the_helm_test_pod_passes(helm: Helm, chart_cluster: ChartCluster) -> None:
    """Scenario 4: the chart rendered with replicas=5 has the same pod template, so pods 0-2 keep running
    and only pods 3 and 4 start; they join, and `raftka cluster balance --execute --wait` (the CLI in a
    client pod) moves replicas onto them. The pre-upgrade hook's Job then passes for 5 replicas and
    refuses a return to 3 (brokers 4 and 5 hold replicas). Scenario 5: the `helm test` Pod, exactly as
    rendered, passes against that cluster."""
    cluster = chart_cluster
    started = time.monotonic()
    three, five = render(helm), render(helm, "--set", "replicas=5")
    assert five[("StatefulSet", FULLNAME)]["spec"]["template"] == cluster.template, "scaling would restart pods"
    cluster.statefulset = five[("StatefulSet", FULLNAME)]
    cluster.start(3, 4)
    brokers = {b["id"]: b for b in cluster.cli_json("cluster", "status")}
    assert set(brokers) == {1, 2, 3, 4, 5} and brokers[4]["replicas"] == brokers[5]["replicas"] == 0, brokers
    plan = cluster.cli_json("cluster", "balance", "--execute", "--wait")
    assert plan["executed"], plan
    brokers = {b["id"]: b for b in cluster.cli_json("cluster", "status")}
    assert brokers[4]["replicas"] > 0 and brokers[5]["replicas"] > 0, brokers
    print(f"scenario 4, pods 3 and 4 started and joined, balance moved {plan['replicas_moved']} replicas: "
          f"{time.monotonic() - started:.1f} s")

    guard = f"{FULLNAME}-scale-check"
    status, out = finish(cluster.pod(five[("Job", guard)]["spec"]["template"]["spec"], guard))
    assert status == 0, f"the pre-upgrade hook of the scale-up to 5 refused it:\n{out}"
    status, out = finish(cluster.pod(three[("Job", guard)]["spec"]["template"]["spec"], guard))
    assert status == 1 and "broker 4: " in out and "broker 5: " in out, f"a scale-down to 3 was not refused:\n{out}"

    started = time.monotonic()
    status, out = finish(cluster.pod(cluster.test_pod["spec"], cluster.test_pod["metadata"]["name"]))
    assert status == 0, out
    assert re.fullmatch(rf"produced and consumed 'hello from helm test [-0-9a-f]+' through {FULLNAME}\.{NAMESPACE}"
                        rf"\.svc\.{CLUSTER_DOMAIN}:9092", out.splitlines()[-1]), out
    print(f"scenario 5, the helm test Pod: {time.monotonic() - started:.1f} s")
