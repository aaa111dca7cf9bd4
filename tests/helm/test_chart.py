"""The Helm chart in helm/raftka, rendered offline: `helm lint --strict`, a matrix of values validated
against Kubernetes 1.30's schemas by kubernetes-validate --strict, the values schema's and the
templates' refusals (each with helm's message), and the rendered StatefulSet's shape. No API server
runs here; the container tests start the rendered pods. helm comes from scripts/install-helm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helm_chart import (BOOTSTRAP, CHART, FULLNAME, NAMESPACE, POD_DOMAIN, RELEASE, Helm, broker_container, render,
                        render_text, run_helm)

VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"
MONITORING = ("--set", "monitoring.podMonitor.enabled=true", "--api-versions", "monitoring.coreos.com/v1")
TLS = ("--set", "tls.enabled=true", "--set", "tls.secretName=raftka-tls")


def refusal(helm: Helm, *args: str) -> str:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, f"helm rendered {args} instead of refusing it"
    return result.stderr


def test_lint_strict(helm) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("args", [
    (),
    ("--set", "replicas=5"),
    ("--set", "replicas=5", "--set", "controllers=5"),
    ("--set", "rack.value=eu-west-1a"),
    ("--set", "rack.fromNodeZone=true", "--set", "placement.antiAffinity=hard"),
    TLS,
    MONITORING,
    ("--set", "networkPolicy.allowExternal=false",
     "--set", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring"),
    ("--set", "networkPolicy.enabled=false", "--set", "scaleDownGuard.enabled=false",
     "--set", "placement.antiAffinity=none", "--set", "placement.topologySpread.enabled=false"),
    ("--set", "replicas=1", "--set", "controllers=1"),
], ids=["defaults", "5-replicas", "5-controllers", "rack", "zone-rack-hard-anti-affinity", "tls", "monitoring",
        "closed-network-policy", "minimal", "one-broker"])
def test_rendered_manifests_are_valid_kubernetes_1_30(helm, tmp_path, args) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render_text(helm, *args))
    result = subprocess.run([str(VALIDATOR), "--strict", "-k", "1.30", str(rendered)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("INFO")]
    expected = ["WARN"] if args == MONITORING else []
    assert [line.split()[0] for line in warnings] == expected, warnings
    assert "passed for resource statefulset/rk-raftka" in result.stdout


def test_the_validator_rejects_an_unknown_field(tmp_path) -> None:
    """The matrix above can fail: kubernetes-validate --strict refuses a field Kubernetes does not know."""
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                        "spec": {"ports": [{"port": 1}], "publishNotReady": True}}))
    result = subprocess.run([str(VALIDATOR), "--strict", "-k", "1.30", str(manifest)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "publishNotReady" in result.stdout + result.stderr


@pytest.mark.parametrize("args, message", [
    (("--set", "surprise=1"), "at '': additional properties 'surprise' not allowed"),
    (("--set", "tls.certFile=x"), "at '/tls': additional properties 'certFile' not allowed"),
    (("--set", "replicas=0"), "at '/replicas': minimum: got 0, want 1"),
    (("--set", "controllers=2"), "at '/controllers': value must be one of 1, 3, 5"),
    (("--set", "controllers=4"), "at '/controllers': value must be one of 1, 3, 5"),
    (("--set", "rack.value=7"), "at '/rack/value': got number, want string"),
    (("--set", "placement.antiAffinity=sometimes"), "at '/placement/antiAffinity': value must be one of 'soft', "
                                                    "'hard', 'none'"),
    (("--set", "storage.size=lots"), "at '/storage/size'"),
    (("--set", "extraArgs[0]=balance-on-join"), "at '/extraArgs/0'"),
])
def test_the_schema_refuses_bad_values(helm, args, message) -> None:
    stderr = refusal(helm, *args)
    assert "values don't meet the specifications of the schema" in stderr and message in stderr, stderr


@pytest.mark.parametrize("args, message", [
    (("--set", "replicas=2"), "replicas (2) must be at least controllers (3)"),
    (("--set", "replicas=4", "--set", "controllers=5"), "replicas (4) must be at least controllers (5)"),
    (("--set", "controllers=1"), "controllers 1 with replicas 3: the PodDisruptionBudget (maxUnavailable 1) would "
                                 "let a voluntary disruption take the only controller"),
    (("--set", "tls.enabled=true"), "tls.enabled needs tls.secretName"),
    (("--set", "monitoring.podMonitor.enabled=true"), "monitoring.podMonitor.enabled needs the "
                                                      "monitoring.coreos.com/v1 API"),
])
def test_the_templates_refuse_what_would_lose_quorum_or_cannot_work(helm, args, message) -> None:
    stderr = refusal(helm, *args)
    assert message in stderr, stderr


def test_the_disruption_budget_allows_one_broker_down_and_none_for_a_lone_broker(helm) -> None:
    budget = render(helm)[("PodDisruptionBudget", FULLNAME)]["spec"]
    assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": {
        "app.kubernetes.io/name": "raftka", "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "broker"}}}
    alone = render(helm, "--set", "replicas=1", "--set", "controllers=1")
    assert not [key for key in alone if key[0] == "PodDisruptionBudget"]


def test_the_stateful_set_starts_pods_in_parallel_and_keeps_their_volumes(helm) -> None:
    objects = render(helm)
    spec = objects[("StatefulSet", FULLNAME)]["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == f"{FULLNAME}-headless"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    headless = objects[("Service", f"{FULLNAME}-headless")]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in headless["ports"]} == {"grpc": 9092, "raft": 9093, "metrics": 9644}
    client = objects[("Service", FULLNAME)]["spec"]
    assert "publishNotReadyAddresses" not in client and [p["port"] for p in client["ports"]] == [9092]
    assert client["selector"] == headless["selector"] == spec["selector"]["matchLabels"]


def test_the_broker_binds_to_its_pod_ip_and_advertises_its_pod_name(helm) -> None:
    container = broker_container(render(helm))
    peers = ",".join(f"{i + 1}={FULLNAME}-{i}.{POD_DOMAIN}:9092" for i in range(3))
    assert container["args"] == [
        "--id-from-name=$(POD_NAME)", "--listen=$(POD_IP):9092", f"--advertise=$(POD_NAME).{POD_DOMAIN}:9092",
        "--raft-listen=$(POD_IP):9093", f"--peers={peers}", f"--cluster-id={FULLNAME}",
        "--data-dir=/var/lib/raftka", "--metrics-host=$(POD_IP)", "--metrics-port=9644"]
    assert "command" not in container, "the image's entrypoint is `raftka broker`"
    env = container["env"]
    assert env == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "RAFTKA_BOOTSTRAP", "value": "$(POD_IP):9092"}]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 9092, "raft": 9093,
                                                                          "metrics": 9644}
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/raftka"}]


def test_probes_ask_the_broker_service_for_readiness_and_liveness_for_liveness(helm) -> None:
    container = broker_container(render(helm))
    assert container["startupProbe"]["grpc"] == {"port": 9092, "service": "raftka.v1.Broker"}
    assert container["readinessProbe"]["grpc"] == {"port": 9092, "service": "raftka.v1.Broker"}
    assert container["livenessProbe"]["grpc"] == {"port": 9092, "service": "liveness"}
    assert "lifecycle" not in container, "SIGTERM itself hands leadership off; no preStop is needed"


def test_the_health_services_the_probes_name_exist_in_the_broker() -> None:
    from raftka.cluster.broker import LIVENESS_SERVICE
    from raftka.proto import api_pb2

    assert LIVENESS_SERVICE == "liveness"
    assert api_pb2.DESCRIPTOR.services_by_name["Broker"].full_name == "raftka.v1.Broker"


def test_pods_run_restricted_and_without_service_links_by_default(helm) -> None:
    objects = render(helm)
    pods = [objects[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"],
            objects[("Job", f"{FULLNAME}-scale-check")]["spec"]["template"]["spec"],
            objects[("Pod", f"{FULLNAME}-test")]["spec"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False, "no RAFTKA_*_PORT=tcp://... variables from Services"
        for container in pod["containers"]:
            assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def test_changing_replicas_changes_no_pod_template(helm) -> None:
    """A StatefulSet restarts its pods when their template changes: scaling must never do that."""
    three, five = (render(helm, "--set", f"replicas={n}")[("StatefulSet", FULLNAME)]["spec"] for n in (3, 5))
    assert three["template"] == five["template"]
    assert {k: v for k, v in three.items() if k != "replicas"} == {k: v for k, v in five.items() if k != "replicas"}
    assert (three["replicas"], five["replicas"]) == (3, 5)


def test_racks_come_from_a_value_or_the_nodes_zone_label(helm) -> None:
    by_value = broker_container(render(helm, "--set", "rack.value=eu-west-1a"))["env"]
    assert {"name": "RAFTKA_RACK", "value": "eu-west-1a"} in by_value
    by_zone = broker_container(render(helm, "--set", "rack.fromNodeZone=true"))["env"]
    assert {"name": "RAFTKA_RACK", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['topology.kubernetes.io/zone']"}}} in by_zone


def test_placement_presets(helm) -> None:
    soft = render(helm)[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]
    [preferred] = soft["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert soft["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    hard = render(helm, "--set", "placement.antiAffinity=hard")[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]
    assert hard["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
        "topologyKey"] == "kubernetes.io/hostname"
    none = render(helm, "--set", "placement.antiAffinity=none", "--set", "placement.topologySpread.enabled=false")
    assert "affinity" not in none[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in none[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]


def test_tls_mounts_the_secret_and_passes_its_files(helm) -> None:
    objects = render(helm, *TLS)
    container = broker_container(objects)
    assert container["args"][-3:] == ["--tls-cert=/etc/raftka/tls/tls.crt", "--tls-key=/etc/raftka/tls/tls.key",
                                      "--tls-ca=/etc/raftka/tls/ca.crt"]
    assert {"name": "tls", "mountPath": "/etc/raftka/tls", "readOnly": True} in container["volumeMounts"]
    volumes = objects[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "tls", "secret": {"secretName": "raftka-tls"}}]
    assert not [arg for arg in broker_container(render(helm))["args"] if arg.startswith("--tls")]


def test_the_network_policy_keeps_raft_to_the_brokers(helm) -> None:
    open_policy = render(helm)[("NetworkPolicy", FULLNAME)]["spec"]
    brokers, clients, metrics = open_policy["ingress"]
    assert brokers == {"from": [{"podSelector": {"matchLabels": open_policy["podSelector"]["matchLabels"]}}]}
    assert clients == {"ports": [{"port": 9092}]} and metrics == {"ports": [{"port": 9644}]}
    closed = render(helm, "--set", "networkPolicy.allowExternal=false")
    _, clients, _ = closed[("NetworkPolicy", FULLNAME)]["spec"]["ingress"]
    assert clients["from"] == [{"podSelector": {"matchLabels": {f"{FULLNAME}-client": "true"}}}]
    for pod in (closed[("Job", f"{FULLNAME}-scale-check")]["spec"]["template"], closed[("Pod", f"{FULLNAME}-test")]):
        assert pod["metadata"]["labels"][f"{FULLNAME}-client"] == "true", "the chart's own clients are admitted"
    assert ("NetworkPolicy", FULLNAME) not in render(helm, "--set", "networkPolicy.enabled=false")


def test_the_pod_monitor_scrapes_every_broker(helm) -> None:
    monitor = render(helm, *MONITORING)[("PodMonitor", FULLNAME)]["spec"]
    assert monitor["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["selector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"
    assert not [key for key in render(helm) if key[0] == "PodMonitor"]


def test_the_scale_down_guard_runs_scale_check_before_each_upgrade(helm) -> None:
    job = render(helm, "--set", "replicas=4")[("Job", f"{FULLNAME}-scale-check")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["raftka", "cluster", "scale-check", "--brokers", "4"]
    assert container["env"] == [{"name": "RAFTKA_BOOTSTRAP", "value": BOOTSTRAP}]
    assert ("Job", f"{FULLNAME}-scale-check") not in render(helm, "--set", "scaleDownGuard.enabled=false")


def test_the_helm_test_pod_produces_and_consumes_through_the_client_service(helm) -> None:
    pod = render(helm)[("Pod", f"{FULLNAME}-test")]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert container["env"] == [{"name": "RAFTKA_BOOTSTRAP", "value": BOOTSTRAP}]
    script = container["command"][2]
    assert container["command"][:2] == ["sh", "-c"]
    for step in ('raftka topic create "$topic"', 'raftka produce "$topic"', 'raftka consume "$topic"',
                 'raftka topic delete "$topic"'):
        assert step in script


def test_the_helm_test_script_passes_against_real_brokers_and_fails_without_them(helm, start_cluster,
                                                                                 free_port) -> None:
    """The test Pod's script, run as the Pod would run it (its command and env, the bootstrap address
    pointed at this machine's brokers)."""
    brokers = start_cluster(3)
    [container] = render(helm)[("Pod", f"{FULLNAME}-test")]["spec"]["containers"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAFTKA_REQUEST_TIMEOUT_MS": "5000"}
    result = subprocess.run(container["command"], env={**env, "RAFTKA_BOOTSTRAP": brokers[0].address},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("produced and consumed 'hello from helm test ")
    unreachable = subprocess.run(container["command"], env={**env, "RAFTKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"},
                                 capture_output=True, text=True, timeout=120)
    assert unreachable.returncode != 0 and "produced and consumed" not in unreachable.stdout


def test_notes_say_how_to_produce_and_consume(helm) -> None:
    result = run_helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout[result.stdout.index("NOTES:"):]
    assert BOOTSTRAP in notes
    assert f"exec -i {FULLNAME}-0 -- raftka produce orders" in notes
    assert f"exec -it {FULLNAME}-0 -- raftka consume orders" in notes
    assert "raftka broker decommission ID --wait" in notes
