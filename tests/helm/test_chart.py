"""The Helm chart in helm/raftka, rendered offline: `helm lint --strict`, a matrix of values validated
against Kubernetes 1.30's schemas by kubernetes-validate --strict, the values schema's and the
templates' refusals (each with helm's message), and the rendered StatefulSet's shape. No API server
runs here; the container tests start the rendered pods. helm comes from scripts/install-helm."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helm_chart import (BOOTSTRAP, CHART, FULLNAME, NAMESPACE, POD_DOMAIN, RELEASE, Helm, broker_container, render,
                        render_text, run_helm)
from raftka.client.certs import issue, local_pki
from raftka.cluster import cli as broker_cli
from raftka.wire.tls import ANY_BROKER

VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"
MONITORING = ("--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
              "--set", "monitoring.dashboards.enabled=true", "--api-versions", "monitoring.coreos.com/v1")
TLS = ("--set", "tls.enabled=true", "--set", "tls.secretName=raftka-tls")
CERT_MANAGER = ("--set", "tls.enabled=true", "--set", "tls.certManager.issuer.name=raftka-ca",
                "--api-versions", "cert-manager.io/v1")


def refusal(helm: Helm, *args: str) -> str:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, f"helm rendered {args} instead of refusing it"
    return result.stderr


def test_lint_strict(helm) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("args, custom_resources", [
    ((), 0),
    (("--set", "replicas=5"), 0),
    (("--set", "replicas=5", "--set", "controllers=5"), 0),
    (("--set", "rack.value=eu-west-1a"), 0),
    (("--set", "rack.fromNodeZone=true", "--set", "placement.antiAffinity=hard"), 0),
    (TLS, 0),
    (TLS + ("--set", "tls.metrics=false"), 0),
    (TLS + ("--set", "tls.principalRules[0]=RULE:^CN=(.*)$/$1/L", "--set", "tls.principalRules[1]=DEFAULT"), 0),
    (CERT_MANAGER, 1),
    (MONITORING, 2),
    (MONITORING + CERT_MANAGER, 3),
    (("--set", "networkPolicy.allowExternal=false",
      "--set", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring"), 0),
    (("--set", "networkPolicy.enabled=false", "--set", "scaleDownGuard.enabled=false",
      "--set", "placement.antiAffinity=none", "--set", "placement.topologySpread.enabled=false"), 0),
    (("--set", "replicas=1", "--set", "controllers=1"), 0),
], ids=["defaults", "5-replicas", "5-controllers", "rack", "zone-rack-hard-anti-affinity", "tls", "tls-plain-metrics",
        "tls-principal-rules", "tls-cert-manager", "monitoring", "monitoring-tls-cert-manager", "closed-network-policy",
        "minimal", "one-broker"])
def test_rendered_manifests_are_valid_kubernetes_1_30(helm, tmp_path, args, custom_resources) -> None:
    """Custom resources (PodMonitor, PrometheusRule, Certificate) get one WARN each: the validator has no schema
    for CRDs."""
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render_text(helm, *args))
    result = subprocess.run([str(VALIDATOR), "--strict", "-k", "1.30", str(rendered)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("INFO")]
    assert [line.split()[0] for line in warnings] == ["WARN"] * custom_resources, warnings
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
    (("--set", "tls.certManager.issuer.kind=Vault"), "at '/tls/certManager/issuer/kind': value must be one of "
                                                     "'Issuer', 'ClusterIssuer'"),
    (("--set", "tls.certManager.duration=1h"), "at '/tls/certManager': additional properties 'duration' not allowed"),
    (("--set", "tls.principalRules[0]=CN"), "at '/tls/principalRules/0'"),
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
    (("--set", "tls.enabled=true", "--set", "tls.certManager.issuer.name=raftka-ca"),
     "tls.certManager.issuer needs the cert-manager.io/v1 API"),
    (("--set", "tls.certManager.issuer.name=raftka-ca", "--api-versions", "cert-manager.io/v1"),
     "tls.certManager.issuer is set but tls.enabled is false"),
    (("--set", "tls.principalRules[0]=DEFAULT"), "tls.principalRules map client certificates, which only tls.enabled"),
    (("--set", "monitoring.podMonitor.enabled=true"), "monitoring.podMonitor.enabled needs the "
                                                      "monitoring.coreos.com/v1 API"),
    (("--set", "monitoring.prometheusRule.enabled=true"), "monitoring.prometheusRule.enabled needs the "
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


def test_with_tls_the_probes_get_the_metrics_ports_health_paths(helm) -> None:
    """Kubernetes' gRPC probe speaks neither TLS nor mTLS: with TLS on, the probes are httpGet of the same
    services' paths on the metrics port, HTTPS when the metrics port serves TLS."""
    from raftka.cluster.health import HTTP_PROBES

    for args, scheme in ((TLS, "HTTPS"), (TLS + ("--set", "tls.metrics=false"), "HTTP")):
        container = broker_container(render(helm, *args))
        probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
        assert not [probe for probe in probes.values() if "grpc" in probe]
        paths = {kind: probe["httpGet"].pop("path") for kind, probe in probes.items()}
        assert {kind: HTTP_PROBES[path] for kind, path in paths.items()} == {
            "startup": "raftka.v1.Broker", "readiness": "raftka.v1.Broker", "liveness": "liveness"}
        assert [probe["httpGet"] for probe in probes.values()] == [{"port": 9644, "scheme": scheme}] * 3
        assert ("--metrics-tls" in container["args"]) == (scheme == "HTTPS")


def test_the_health_services_the_probes_name_exist_in_the_broker() -> None:
    from raftka.cluster.health import LIVENESS_SERVICE, READINESS_SERVICE

    assert (READINESS_SERVICE, LIVENESS_SERVICE) == ("raftka.v1.Broker", "liveness")


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


TLS_ENV = [{"name": "RAFTKA_TLS_CA", "value": "/etc/raftka/tls/ca.crt"},
           {"name": "RAFTKA_TLS_CERT", "value": "/etc/raftka/tls/tls.crt"},
           {"name": "RAFTKA_TLS_KEY", "value": "/etc/raftka/tls/tls.key"}]
TLS_MOUNT = {"name": "tls", "mountPath": "/etc/raftka/tls", "readOnly": True}


def test_tls_mounts_the_secret_and_passes_its_files(helm) -> None:
    objects = render(helm, *TLS)
    container = broker_container(objects)
    assert container["args"][-4:] == ["--tls-cert=/etc/raftka/tls/tls.crt", "--tls-key=/etc/raftka/tls/tls.key",
                                      "--tls-ca=/etc/raftka/tls/ca.crt", "--metrics-tls"]
    assert TLS_MOUNT in container["volumeMounts"]
    volumes = objects[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "tls", "secret": {"secretName": "raftka-tls"}}]
    assert not [arg for arg in broker_container(render(helm))["args"] if arg.startswith(("--tls", "--metrics-tls"))]


def kubernetes_expand(arg: str, variables: dict[str, str]) -> str:
    """What Kubernetes makes of a container argument: `$(VAR)` is the variable's value, `$$` is `$`."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda match: "$" if match.group(0) == "$$" else variables.get(match.group(1), match.group(0)), arg)


def test_principal_rules_reach_the_broker_as_written(helm, tmp_path) -> None:
    """tls.principalRules become --tls-principal-rule flags in order, each '$' doubled, so that after
    Kubernetes' $(VAR) expansion the broker's parser reads the rules as written (even one whose regex
    contains `$(POD_NAME)`)."""
    rules = [r"SAN:URI:spiffe:\/\/example\.org\/ns\/[^\/]+\/sa\/([^\/]+)/$1/",
             r"RULE:^CN=([^,]+),OU=Payments$(POD_NAME)?/$1/L", "DEFAULT"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"tls": {"principalRules": rules}}))
    flags = [arg for arg in broker_container(render(helm, *TLS, "-f", str(values)))["args"]
             if arg.startswith("--tls-principal-rule")]
    assert flags == [f"--tls-principal-rule={rule.replace('$', '$$')}" for rule in rules]
    parser = argparse.ArgumentParser()
    broker_cli.add_arguments(parser)
    args = parser.parse_args([kubernetes_expand(flag, {"POD_NAME": "rk-raftka-0"}) for flag in flags])
    assert [rule.text for rule in broker_cli.principal_rules(args)] == rules
    assert not [arg for arg in broker_container(render(helm, *TLS))["args"] if arg.startswith("--tls-principal")]


def test_with_tls_every_pods_cli_connects_with_the_secrets_files(helm) -> None:
    """`kubectl exec ... raftka`, the scale-check hook and the helm test Pod: the CLI's RAFTKA_TLS_*
    variables name the mounted Secret's files, and the broker pod's bootstrap is its own DNS name (which
    the certificate names; the pod IP it does not)."""
    objects = render(helm, *TLS)
    env = broker_container(objects)["env"]
    assert env[2:] == [{"name": "RAFTKA_BOOTSTRAP", "value": f"$(POD_NAME).{POD_DOMAIN}:9092"}, *TLS_ENV]
    pods = {"scale-check": objects[("Job", f"{FULLNAME}-scale-check")]["spec"]["template"]["spec"],
            "test": objects[("Pod", f"{FULLNAME}-test")]["spec"]}
    for name, pod in pods.items():
        [container] = pod["containers"]
        assert container["env"] == [{"name": "RAFTKA_BOOTSTRAP", "value": BOOTSTRAP}, *TLS_ENV], name
        assert container["volumeMounts"] == [TLS_MOUNT], name
        assert pod["volumes"] == [{"name": "tls", "secret": {"secretName": "raftka-tls"}}], name
    plaintext = render(helm)
    for pod in (plaintext[("Job", f"{FULLNAME}-scale-check")]["spec"]["template"]["spec"],
                plaintext[("Pod", f"{FULLNAME}-test")]["spec"]):
        assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]


def test_cert_manager_issues_the_secret_the_pods_mount(helm) -> None:
    objects = render(helm, *CERT_MANAGER)
    certificate = objects[("Certificate", f"{FULLNAME}-tls")]
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    spec = certificate["spec"]
    assert spec["secretName"] == f"{FULLNAME}-tls"
    assert spec["dnsNames"] == [f"*.{POD_DOMAIN}", f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
                                f"{FULLNAME}.{NAMESPACE}.svc", f"{FULLNAME}.{NAMESPACE}", FULLNAME]
    assert spec["uris"] == ["raftka://broker/*"]
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert spec["issuerRef"] == {"name": "raftka-ca", "kind": "Issuer", "group": "cert-manager.io"}
    volumes = objects[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "tls", "secret": {"secretName": f"{FULLNAME}-tls"}}]
    named = render(helm, *CERT_MANAGER, "--set", "tls.secretName=mine", "--set",
                   "tls.certManager.issuer.kind=ClusterIssuer")
    assert named[("Certificate", f"{FULLNAME}-tls")]["spec"]["secretName"] == "mine"
    assert named[("Certificate", f"{FULLNAME}-tls")]["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    [volume] = named[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"] == {"secretName": "mine"}
    assert not [key for key in render(helm, *TLS) if key[0] == "Certificate"]


def test_the_certificate_names_what_clients_and_brokers_verify(helm) -> None:
    """The advertised pod names and the client Service (what the pods' CLI and the PodMonitor verify) match
    the Certificate's names, and its URI is the one every broker id accepts."""
    from raftka.wire.tls import ANY_BROKER, broker_uri

    objects = render(helm, *CERT_MANAGER, *MONITORING)
    spec = objects[("Certificate", f"{FULLNAME}-tls")]["spec"]
    assert spec["uris"] == [broker_uri(ANY_BROKER)]
    names = set(spec["dnsNames"])
    container = broker_container(objects)
    advertised = next(arg for arg in container["args"] if arg.startswith("--advertise="))
    pod_name = advertised.removeprefix("--advertise=$(POD_NAME)").rsplit(":", 1)[0]
    assert f"*{pod_name}" in names
    assert BOOTSTRAP.rsplit(":", 1)[0] in names
    endpoint = objects[("PodMonitor", FULLNAME)]["spec"]["podMetricsEndpoints"][0]
    assert endpoint["tlsConfig"]["serverName"] in names


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
    [https] = render(helm, *MONITORING, *TLS)[("PodMonitor", FULLNAME)]["spec"]["podMetricsEndpoints"]
    assert https["scheme"] == "https"
    assert https["tlsConfig"] == {"ca": {"secret": {"name": "raftka-tls", "key": "ca.crt"}},
                                  "serverName": BOOTSTRAP.rsplit(":", 1)[0]}
    [plain] = render(helm, *MONITORING, *TLS, "--set", "tls.metrics=false")[("PodMonitor", FULLNAME)]["spec"][
        "podMetricsEndpoints"]
    assert "scheme" not in plain and "tlsConfig" not in plain
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


def test_with_tls_the_helm_test_script_and_the_scale_check_pass_against_a_tls_cluster(
        helm, start_cluster, tmp_path) -> None:
    """The test Pod and the scale-check Job as rendered with TLS (their command and env; the Secret's mount
    path pointed at a directory holding what the Secret would: one certificate naming raftka://broker/*,
    which every broker and these pods share, its key and the CA) against brokers requiring client
    certificates. The same script rendered without TLS fails against them."""
    pki = local_pki(tmp_path / "pki", 3)
    shared = issue(pki.authority(), "raftka-brokers", hosts=["127.0.0.1", "localhost"], broker_id=ANY_BROKER)
    for broker_id in (1, 2, 3):
        cert, key = pki.broker(broker_id)
        cert.write_bytes(shared.cert)
        key.write_bytes(shared.key)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "tls.crt").write_bytes(shared.cert)
    (secret / "tls.key").write_bytes(shared.key)
    (secret / "ca.crt").write_bytes(pki.ca.read_bytes())
    brokers = start_cluster(3, pki=pki)
    objects = render(helm, *TLS, "--set", f"tls.mountPath={secret}")
    [test_pod] = objects[("Pod", f"{FULLNAME}-test")]["spec"]["containers"]
    [scale_check] = objects[("Job", f"{FULLNAME}-scale-check")]["spec"]["template"]["spec"]["containers"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAFTKA_REQUEST_TIMEOUT_MS": "5000"}

    def run(container: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        rendered = {e["name"]: e["value"] for e in container["env"]}
        assert rendered["RAFTKA_BOOTSTRAP"] == BOOTSTRAP
        return subprocess.run(container["command"], env={**env, **rendered, "RAFTKA_BOOTSTRAP": brokers[0].address},
                              capture_output=True, text=True, timeout=120)

    result = run(test_pod)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("produced and consumed 'hello from helm test ")
    checked = run(scale_check)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    [plaintext] = render(helm)[("Pod", f"{FULLNAME}-test")]["spec"]["containers"]
    refused = run(plaintext)
    assert refused.returncode != 0 and "produced and consumed" not in refused.stdout


def test_notes_say_how_to_produce_and_consume(helm) -> None:
    result = run_helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout[result.stdout.index("NOTES:"):]
    assert BOOTSTRAP in notes
    assert f"exec -i {FULLNAME}-0 -- raftka produce orders" in notes
    assert f"exec -it {FULLNAME}-0 -- raftka consume orders" in notes
    assert "raftka broker decommission ID --wait" in notes


def test_the_prometheus_rule_is_the_alert_rules_file(helm) -> None:
    rule = render(helm, *MONITORING)[("PrometheusRule", FULLNAME)]
    assert rule["spec"] == yaml.safe_load((CHART / "alerts" / "raftka.rules.yml").read_text())
    assert {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]} >= {
        "RaftkaLeaderlessPartitions", "RaftkaUnderReplicatedPartitions", "RaftkaConsumerLagGrowing",
        "RaftkaDiskNearlyFull", "RaftkaBrokerDown", "RaftkaFsyncLatencyHigh"}
    assert not [key for key in render(helm) if key[0] == "PrometheusRule"]


def test_the_dashboard_config_map_carries_the_dashboard_for_grafanas_sidecar(helm) -> None:
    config_map = render(helm, *MONITORING)[("ConfigMap", f"{FULLNAME}-dashboards")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"]["raftka.json"] == (CHART / "dashboards" / "raftka.json").read_text().rstrip("\n")
    assert not [key for key in render(helm) if key == ("ConfigMap", f"{FULLNAME}-dashboards")]
