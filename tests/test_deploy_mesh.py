"""The mesh's deployment files: the DaemonSet and its headless Service, the Prometheus
scrape job and the alerting rules, checked by the real tools (promtool, prometheus,
kubernetes-validate) and against each other.

Debian's Prometheus is built without Kubernetes discovery, so the scrape job's
relabelling runs in a real prometheus fed, from a file, the targets Kubernetes
discovery would give it for the DaemonSet's pods.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from recipes import ROOT, tool
from support import require, unused_port
from test_container import kube_check

KUBE = ROOT / "deploy" / "kubernetes"
PROM = ROOT / "deploy" / "prometheus"
MANIFESTS = [KUBE / "mesh-daemonset.yaml", KUBE / "mesh-service.yaml"]
ALERTS = {"PytcpechoPeerDown", "PytcpechoCorruption", "PytcpechoSuspectedMTUBlackhole",
          "PytcpechoHighRTT", "PytcpechoPeerUDPLoss"}

# What `pytcpecho mesh` exports (a histogram as its three series), and the label values.
EXPORTED = {
    "pytcpecho_peer_up", "pytcpecho_peer_check_intact", "pytcpecho_peer_checks_total",
    "pytcpecho_peer_rtt_seconds_bucket", "pytcpecho_peer_rtt_seconds_sum",
    "pytcpecho_peer_rtt_seconds_count", "pytcpecho_peer_bulk_bytes_per_second",
    "pytcpecho_peer_info", "pytcpecho_connections_active", "pytcpecho_connections_total",
    "pytcpecho_bytes_echoed_total", "pytcpecho_connections_closed_total",
    "pytcpecho_peer_udp_loss_ratio", "pytcpecho_peer_udp_rtt_seconds_bucket",
    "pytcpecho_peer_udp_rtt_seconds_sum", "pytcpecho_peer_udp_rtt_seconds_count",
    "pytcpecho_peer_udp_jitter_seconds", "pytcpecho_peer_hops",
    "pytcpecho_udp_datagrams_received_total", "pytcpecho_udp_datagrams_echoed_total",
    "pytcpecho_udp_bytes_received_total", "pytcpecho_udp_bytes_echoed_total",
    "pytcpecho_udp_dropped_total",
}
LABEL_VALUES = {"check": {"ping", "bulk", "udp"},
                "result": {"intact", "mismatch", "short", "stalled", "timeout", "refused",
                           "unreachable", "lossy", "lost"}}


def need_debian_tool(name: str, package: str) -> str:
    path = tool(name)
    if path is None:
        require(f"{name} is not installed (apt-get install {package})",
                f"{name} is missing: .ci/run installs the Debian package {package}")
    assert path is not None
    return path


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_debian_tool("promtool", "prometheus"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerting_rules() -> dict[str, dict[str, Any]]:
    (group,) = load_yaml(PROM / "rules.yml")["groups"]
    assert group["name"] == "pytcpecho-mesh"
    return {rule["alert"]: rule for rule in group["rules"]}


def mesh_job(config: dict[str, Any]) -> dict[str, Any]:
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pytcpecho-mesh"]
    return job


# -- promtool ---------------------------------------------------------------------------

def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_promtool_refuses_bad_promql(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yml"
    broken.write_text((PROM / "rules.yml").read_text()
                      .replace("expr: pytcpecho_peer_up == 0", "expr: pytcpecho_peer_up == ("))
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0, result.stdout
    assert "PytcpechoPeerDown" in result.stderr or "parse error" in result.stderr, result.stderr


def test_rule_unit_tests_catch_a_vector_matching_mistake(tmp_path: Path) -> None:
    """Without ignoring(check) the bulk gauge (check="bulk") matches no pytcpecho_peer_up
    series (which has no check label): the MTU alert could never fire, and the unit
    tests must say so."""
    rules = (PROM / "rules.yml").read_text()
    assert rules.count("and ignoring(check) ") == 1
    (tmp_path / "rules.yml").write_text(rules.replace("and ignoring(check) ", "and "))
    shutil.copy(PROM / "rules_test.yml", tmp_path)
    assert promtool("check", "rules", "rules.yml", cwd=tmp_path).returncode == 0
    result = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "PytcpechoSuspectedMTUBlackhole" in result.stdout + result.stderr


@pytest.mark.parametrize(("mutation", "what"), [
    (("avg_over_time(pytcpecho_peer_udp_loss_ratio[5m])", "pytcpecho_peer_udp_loss_ratio"),
     "one bad probe, not averaged, would fire"),
    (("\n          and pytcpecho_peer_up == 1", ""), "a peer down would fire it too"),
], ids=["not-averaged", "down-too"])
def test_rule_unit_tests_hold_the_udp_loss_alert_to_its_word(
        tmp_path: Path, mutation: tuple[str, str], what: str) -> None:
    """The UDP loss alert averages the last probes' loss and leaves a peer down to
    PeerDown: without either, the unit tests must fail (``what`` would happen)."""
    rules = (PROM / "rules.yml").read_text()
    old, new = mutation
    assert rules.count(old) == 1, old
    (tmp_path / "rules.yml").write_text(rules.replace(old, new))
    shutil.copy(PROM / "rules_test.yml", tmp_path)
    assert promtool("check", "rules", "rules.yml", cwd=tmp_path).returncode == 0
    result = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0, (what, result.stdout)
    assert "PytcpechoPeerUDPLoss" in result.stdout + result.stderr


def with_file_discovery(tmp_path: Path, targets: list[dict[str, Any]] | None = None) -> Path:
    """prometheus.yml with each job's Kubernetes discovery replaced by one file of
    ``targets`` (and rules.yml beside it), in tmp_path; every other line as it is."""
    config = load_yaml(PROM / "prometheus.yml")
    assert [j["job_name"] for j in config["scrape_configs"]] == ["pytcpecho-mesh",
                                                                "pytcpecho-bench"]
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["file_sd_configs"] = [{"files": ["targets.json"]}]
    (tmp_path / "targets.json").write_text(json.dumps(targets or []))
    shutil.copy(PROM / "rules.yml", tmp_path)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_promtool_checks_the_prometheus_config(tmp_path: Path) -> None:
    result = promtool("check", "config", "prometheus.yml")
    output = result.stdout + result.stderr
    if result.returncode != 0:  # a build without Kubernetes discovery (Debian's): only that
        problems = re.findall(r"^\s+line \d+: (.*)$", output, re.M)
        assert problems and set(problems) == {
            "field kubernetes_sd_configs not found in type config.ScrapeConfig"}, output
    else:
        assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout
    # The rest of the file (relabel rules, rule_files) with discovery from a file:
    result = promtool("check", "config", str(with_file_discovery(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout


# -- the scrape job, run ------------------------------------------------------------------

def pod_targets(pod: str, ip: str, annotations: dict[str, str], phase: str = "Running",
                ports: tuple[int, ...] = (8000, 9862),
                labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """What role: pod discovery gives for a pod: one target a container port."""
    meta = {"__meta_kubernetes_namespace": "default", "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_ip": ip, "__meta_kubernetes_pod_node_name": f"node-{pod[-1]}",
            "__meta_kubernetes_pod_phase": phase}
    for key, value in annotations.items():
        meta["__meta_kubernetes_pod_annotation_" + re.sub(r"\W", "_", key)] = value
    for key, value in (labels or {}).items():
        meta["__meta_kubernetes_pod_label_" + re.sub(r"\W", "_", key)] = value
    host = f"[{ip}]" if ":" in ip else ip
    return [{"targets": [f"{host}:{port}"],
             "labels": {**meta, "__meta_kubernetes_pod_container_port_number": str(port)}}
            for port in ports]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@contextlib.contextmanager
def prometheus_on(config: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A real prometheus running ``config`` (in tmp_path): its API's base URL and its
    process (stderr piped); stopped at the end."""
    port = unused_port()
    proc = subprocess.Popen(
        [need_debian_tool("prometheus", "prometheus"), f"--config.file={config}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{port}/api/v1", proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.timeout(60)
def test_scrape_job_finds_the_mesh_pods(tmp_path: Path) -> None:
    """The DaemonSet's annotations select its pods, one target each (not one per port),
    at the annotated port and path, IPv4 or IPv6, labelled with namespace, pod and node;
    unannotated and finished pods are dropped; prometheus loads the four alerts."""
    annotations = load_yaml(KUBE / "mesh-daemonset.yaml")["spec"]["template"]["metadata"][
        "annotations"]
    targets = (pod_targets("pytcpecho-mesh-a", "10.0.1.5", annotations)
               + pod_targets("pytcpecho-mesh-b", "fd00::7", annotations)
               + pod_targets("pytcpecho-c", "10.0.1.6", {}, ports=(8000,))
               + pod_targets("pytcpecho-mesh-d", "10.0.1.7", annotations, phase="Failed"))
    config = with_file_discovery(tmp_path, targets)
    with prometheus_on(config, tmp_path) as (api, proc):
        deadline = time.monotonic() + 40
        while True:  # the scrape manager applies discovered targets every 5 s
            assert proc.poll() is None, proc.communicate()[1]
            try:
                found = get_json(f"{api}/targets")["data"]
            except OSError:
                found = {"activeTargets": []}
            if len(found["activeTargets"]) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        rules = get_json(f"{api}/rules")["data"]["groups"]
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    active = sorted(found["activeTargets"], key=lambda t: t["scrapeUrl"])
    assert [t["scrapeUrl"] for t in active] == ["http://10.0.1.5:9862/metrics",
                                                 "http://[fd00::7]:9862/metrics"], stderr
    assert [t["labels"] for t in active] == [
        {"instance": "10.0.1.5:9862", "job": "pytcpecho-mesh", "namespace": "default",
         "pod": "pytcpecho-mesh-a", "node": "node-a"},
        {"instance": "[fd00::7]:9862", "job": "pytcpecho-mesh", "namespace": "default",
         "pod": "pytcpecho-mesh-b", "node": "node-b"}]
    dropped = {t["discoveredLabels"]["__meta_kubernetes_pod_name"]
               for t in found["droppedTargets"] if t["discoveredLabels"]["job"] == "pytcpecho-mesh"}
    assert dropped == {"pytcpecho-c", "pytcpecho-mesh-d"}
    assert [(g["name"], {r["name"] for r in g["rules"]}) for g in rules] == [
        ("pytcpecho-mesh", ALERTS)]


# -- Kubernetes ---------------------------------------------------------------------------

def test_mesh_manifests_validate(tmp_path: Path) -> None:
    result = kube_check(*MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in MANIFESTS:
        assert re.search(rf"{path.name} passed for resource", result.stdout), result.stdout
    broken = tmp_path / "mesh-daemonset.yaml"  # --strict: a misspelt field is an error
    broken.write_text(MANIFESTS[0].read_text().replace("readOnlyRootFilesystem:",
                                                       "readOnlyRootFileSystem:"))
    assert kube_check(broken).returncode != 0


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_mesh_manifests_agree() -> None:
    daemonset = load_yaml(KUBE / "mesh-daemonset.yaml")
    service = load_yaml(KUBE / "mesh-service.yaml")
    deployment = load_yaml(KUBE / "deployment.yaml")
    echo_service = load_yaml(KUBE / "service.yaml")
    template = daemonset["spec"]["template"]
    pod, labels = template["spec"], template["metadata"]["labels"]
    (container,) = pod["containers"]
    (served,) = deployment["spec"]["template"]["spec"]["containers"]

    # The Service: headless, keeps unready pods, selects exactly the DaemonSet's pods.
    assert service["metadata"]["name"] == daemonset["metadata"]["name"] == "pytcpecho-mesh"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    selector = service["spec"]["selector"]
    assert selector.items() <= labels.items()
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not echo_service["spec"]["selector"].items() <= labels.items(), \
        "the echo Service of service.yaml must not send its clients to mesh pods"

    # One port number everywhere: container, Service, annotations, env, probes; the echo
    # port for TCP and for UDP (the mesh's probes, and its UDP echo), each by its name.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"echo": 8000, "echo-udp": 8000, "metrics": 9862}
    protocols = {p["name"]: p["protocol"] for p in container["ports"]}
    assert protocols == {"echo": "TCP", "echo-udp": "UDP", "metrics": "TCP"}
    assert {p["name"]: (p["port"], p["targetPort"], p["protocol"])
            for p in service["spec"]["ports"]} == {
        name: (number, name, protocols[name]) for name, number in ports.items()}
    assert "PYTCPECHO_NO_UDP" not in env_of(container), "the probe and UDP echo stay on"
    # The echo Service and its Deployment: TCP and UDP too, the server serving both.
    served_ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in served["ports"]}
    assert served_ports == {"echo": (8000, "TCP"), "echo-udp": (8000, "UDP")}
    assert {p["targetPort"]: (p["port"], p["protocol"]) for p in echo_service["spec"]["ports"]
            } == served_ports
    assert env_of(served)["PYTCPECHO_UDP"] == "1"
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(ports["metrics"]),
        "prometheus.io/path": "/metrics"}
    env = env_of(container)
    assert env["PYTCPECHO_PEERS"] == f"{service['metadata']['name']}:{ports['echo']}"
    assert env["PYTCPECHO_PORT"] == str(ports["echo"])
    assert env["PYTCPECHO_METRICS_PORT"] == str(ports["metrics"])
    assert env["PYTCPECHO_SELF"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PYTCPECHO_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["PYTCPECHO_LOG_FORMAT"] == "json"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "echo"}

    # The image and hardening of deployment.yaml; a stop within the grace period.
    assert container["image"] == served["image"] and container["args"] == ["mesh"]
    assert pod["terminationGracePeriodSeconds"] >= float(env["PYTCPECHO_GRACE"]) + 5
    assert pod["securityContext"] == deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    # Every node: a toleration with no key and operator Exists matches every taint.
    assert {"operator": "Exists"} in pod["tolerations"]
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"]

    # The scrape job keeps pods on the very annotations the pod template carries.
    config = load_yaml(PROM / "prometheus.yml")
    assert config["rule_files"] == ["rules.yml"]
    used = {label for rule in mesh_job(config)["relabel_configs"]
            for label in rule.get("source_labels", [])}
    for key in template["metadata"]["annotations"]:
        assert "__meta_kubernetes_pod_annotation_" + re.sub(r"\W", "_", key) in used


# -- the rules ----------------------------------------------------------------------------

def test_rules_use_only_exported_metrics_and_labels() -> None:
    exprs = [rule["expr"] for rule in alerting_rules().values()]
    tests = load_yaml(PROM / "rules_test.yml")["tests"]
    series = [s["series"] for t in tests for s in t["input_series"]]
    for text in exprs + series:
        names = set(re.findall(r"\bpytcpecho_[a-z_]+", text))
        assert names and names <= EXPORTED, (text, names - EXPORTED)
        for label, values in re.findall(r"\b(check|result)\s*=~?\s*\"([^\"]*)\"", text):
            assert set(values.split("|")) <= LABEL_VALUES[label], (text, label, values)


def test_each_alert_is_described_and_tested_both_ways() -> None:
    rules = alerting_rules()
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        for key in ("summary", "description"):
            text = rule["annotations"][key]
            assert "{{ $labels.instance }}" in text and "{{ $labels.peer }}" in text, (name, key)
    assert rules["PytcpechoCorruption"]["labels"]["severity"] == "critical"
    assert "for" not in rules["PytcpechoCorruption"], "a mismatch must alert at once"
    cases = [case for t in load_yaml(PROM / "rules_test.yml")["tests"]
             for case in t["alert_rule_test"]]
    for name in ALERTS:
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name} needs a case that fires and one that must not"
