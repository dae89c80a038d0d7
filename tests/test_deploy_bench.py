"""The load Job (deploy/kubernetes/bench-job.yaml): checked by kubernetes-validate, held to
what a run from many machines needs, and its command line run as its pods would run it.

There is no Kubernetes here, so the pods are network namespaces: one named after the
Service (``pytcpecho``, found through a hosts file as cluster DNS would find it) runs
the Deployment's command, and two more run the Job's command for two indexes, with the
image's environment, the container's, ``JOB_COMPLETION_INDEX`` as the Job controller
sets it and ``$(VAR)`` in the arguments expanded as the kubelet expands it.  Each
pod's stdout is its JSON document, and ``pytcpecho merge`` adds them up.  ``kubectl
logs`` gives stderr and stdout in one stream, the wait line before the document: the
README's recipe keeps the document alone, and merge should take the log as it is.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mesh_lab import FETCH, wait_until
from netns import Lab, lab
from prometheus_client.parser import text_string_to_metric_families
from recipes import ROOT, Stage, dockerfile, local_command, local_env
from support import assert_one_line_error, cli, require, running_server
from test_container import kube_check
from test_deploy_mesh import (
    get_json,
    pod_targets,
    prometheus_on,
    with_file_discovery,
)

from pytcpecho.cli import build_parser

KUBE = ROOT / "deploy" / "kubernetes"
JOB = KUBE / "bench-job.yaml"
PLACEHOLDER = "START-TIME"
"""The start time's value in the file, which the README's recipe replaces (sed)."""


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(JOB)
    return loaded


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return dockerfile()[-1]


def container_of(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def option(args: list[str], name: str) -> str:
    """The value that follows ``name`` in ``args`` (each option and value a list item)."""
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def with_option(args: list[str], name: str, value: str) -> list[str]:
    i = args.index(name)
    return [*args[:i + 1], value, *args[i + 2:]]


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """The kubelet's expansion of command and args: ``$(VAR)`` of a defined variable is
    its value, ``$$`` a literal ``$``; anything else stays as written."""
    def one(m: re.Match[str]) -> str:
        return "$" if m[0] == "$$" else env.get(m[1], m[0])
    return [re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, arg) for arg in args]


def metrics_port(container: dict[str, Any]) -> int:
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    return int(port["containerPort"])


# -- Kubernetes ---------------------------------------------------------------------------

def test_bench_job_validates(tmp_path: Path) -> None:
    result = kube_check(JOB)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"bench-job\.yaml passed for resource job/pytcpecho-bench", result.stdout)
    broken = tmp_path / JOB.name  # --strict: a misspelt field is an error
    broken.write_text(JOB.read_text().replace("completionMode:", "completionmode:"))
    assert kube_check(broken).returncode != 0
    started = tmp_path / "started.yaml"  # as the README's sed gives it to kubectl
    started.write_text(JOB.read_text().replace(PLACEHOLDER, "2026-11-29T08:30:00Z"))
    result = kube_check(started)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bench_job_runs_every_index_once_and_together(job: dict[str, Any]) -> None:
    """Indexed (each pod knows its index: JOB_COMPLETION_INDEX), every pod at once, no
    retry (it would come after the start time), and one failed index does not end the
    Job (that would kill the other pods mid-run, and their results with them)."""
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 2
    assert spec["backoffLimitPerIndex"] == 0
    assert "maxFailedIndexes" not in spec, "every index must run whatever the others do"
    assert spec["backoffLimit"] >= spec["completions"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    # Time to fetch the logs after the end, and a deadline that holds a wait and a run.
    assert spec["ttlSecondsAfterFinished"] >= 600
    args = container_of(job)["args"]
    assert spec["activeDeadlineSeconds"] > 2 * 60 + float(option(args, "--duration"))


def test_bench_job_is_built_as_the_other_manifests(job: dict[str, Any], runtime: Stage) -> None:
    """The image, the user and the locks of deployment.yaml; resources; labels that the
    echo Service does not select (it would send clients to the load generators)."""
    deployment = load_yaml(KUBE / "deployment.yaml")
    service = load_yaml(KUBE / "service.yaml")
    template, served = job["spec"]["template"], deployment["spec"]["template"]
    pod, container = template["spec"], container_of(job)
    assert container["image"] == container_of(deployment)["image"]
    assert container["imagePullPolicy"] == container_of(deployment)["imagePullPolicy"]
    assert "command" not in container, "the image's ENTRYPOINT (pytcpecho) runs it"
    assert runtime.exec_form("ENTRYPOINT") == ["pytcpecho"]
    assert pod["securityContext"] == served["spec"]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == container_of(deployment)["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False
    resources = container["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed: a load generator " \
        "throttled by its CPU limit would report its own stalls as latency"
    assert set(resources["limits"]) == {"cpu", "memory"}
    labels = template["metadata"]["labels"]
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == labels[
        "app.kubernetes.io/name"] == "pytcpecho-bench"
    assert not service["spec"]["selector"].items() <= labels.items()
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_bench_job_arguments(job: dict[str, Any]) -> None:
    """bench against the Service, at a start time from the environment, for a duration,
    JSON on stdout, metrics on the port the scrape annotations and the container name."""
    container = container_of(job)
    args, env = container["args"], env_of(container)
    service = load_yaml(KUBE / "service.yaml")
    (echo,) = [p for p in service["spec"]["ports"] if p["name"] == "echo"]
    assert args[:2] == ["bench", f"{service['metadata']['name']}:{echo['port']}"]
    assert option(args, "--start-at") == "$(START_AT)" and env["START_AT"] == PLACEHOLDER
    assert "--json" in args and "--udp" not in args
    assert float(option(args, "--duration")) >= 10
    assert "--count" not in args, "a count ends each pod at its own time; -t ends them together"
    port = metrics_port(container)
    assert option(args, "--metrics-port") == str(port)
    assert job["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics"}
    # Every option is bench's, with a value it takes, once the start time is set.
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
    parsed = build_parser().parse_args(expand(args, {**env, "START_AT": start}))
    assert parsed.json and parsed.metrics_port == port and parsed.start_at is not None


def test_the_start_time_left_unset_is_refused_at_once(job: dict[str, Any]) -> None:
    """Applied without the README's sed, every pod stops at once with one line saying why
    (no load at a time nobody chose); the sed gives a time bench takes."""
    container = container_of(job)
    args = expand(container["args"], env_of(container))
    started = time.monotonic()
    result = cli(*args, timeout=30)
    line = assert_one_line_error(result, 2)
    assert PLACEHOLDER in line and "ISO 8601" in line, line
    assert time.monotonic() - started < 10
    readme = (ROOT / "README.md").read_text()
    assert f'sed "s/{PLACEHOLDER}/$START/" deploy/kubernetes/bench-job.yaml' in readme
    assert f'sed "s/{PLACEHOLDER}/$START/" deploy/kubernetes/bench-job.yaml' in JOB.read_text()
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
    substituted = yaml.safe_load(JOB.read_text().replace(PLACEHOLDER, start))
    assert env_of(container_of(substituted))["START_AT"] == start


@pytest.mark.timeout(60)
def test_the_scrape_job_finds_the_bench_pods(job: dict[str, Any], tmp_path: Path) -> None:
    """deploy/prometheus/prometheus.yml's pod job, run in a real prometheus fed the targets
    pod discovery gives for the Job's pods: a running pod is scraped at the annotated port
    and path, a finished one (its endpoint closed) is not."""
    template = job["spec"]["template"]["metadata"]
    annotations, labels = template["annotations"], template["labels"]
    port = metrics_port(container_of(job))
    targets = (pod_targets("pytcpecho-bench-0-x7k2p", "10.0.2.5", annotations, ports=(port,),
                           labels=labels)
               + pod_targets("pytcpecho-bench-1-q9w4z", "10.0.2.6", annotations,
                             phase="Succeeded", ports=(port,), labels=labels))
    config = with_file_discovery(tmp_path, targets)
    with prometheus_on(config, tmp_path) as (api, proc):

        def found() -> dict[str, Any]:
            assert proc.poll() is None, "prometheus exited"
            try:
                data: dict[str, Any] = get_json(f"{api}/targets")["data"]
            except OSError:
                return {"activeTargets": [], "droppedTargets": []}
            return data

        # the scrape manager applies discovered targets every 5 s
        seen = wait_until("the bench pod's target", found, 40,
                          until=lambda d: d["activeTargets"], every=0.2)
    # Their own job, every 2 s (the mesh job leaves them to it), a running pod only.
    assert [(t["scrapeUrl"], t["labels"]["pod"], t["labels"]["job"], t["scrapeInterval"])
            for t in seen["activeTargets"]] == [
        (f"http://10.0.2.5:{port}/metrics", "pytcpecho-bench-0-x7k2p", "pytcpecho-bench", "2s")]
    assert {t["discoveredLabels"]["__meta_kubernetes_pod_name"]
            for t in seen["droppedTargets"]
            if t["discoveredLabels"]["job"] == "pytcpecho-bench"} == {"pytcpecho-bench-1-q9w4z"}


# -- the Job's command, run ------------------------------------------------------------------

def fetch(net: Lab, host: str, url: str) -> str | None:
    """GET ``url`` from ``host``'s namespace; None while nothing answers there."""
    result = net.run(host, [sys.executable, "-c", FETCH, url, "3"], timeout=15)
    return result.stdout if result.returncode == 0 else None


def scraped_messages(net: Lab, host: str, url: str) -> float:
    text = fetch(net, host, url)
    if text is None:
        return -1.0
    for family in text_string_to_metric_families(text):
        if family.name == "pytcpecho_bench_messages":
            return float(family.samples[0].value)
    return -1.0


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_job_command_gives_what_merge_takes(job: dict[str, Any], runtime: Stage,
                                                 tmp_path: Path) -> None:
    """Two pods of the Job against the Deployment's server: each one's stdout is its JSON
    document with its index, its stderr the wait line alone; the metrics answer at the
    annotated port and path while it runs; and merge adds the two documents."""
    container, deployment = container_of(job), load_yaml(KUBE / "deployment.yaml")
    served = container_of(deployment)
    entrypoint = runtime.exec_form("ENTRYPOINT")
    service = load_yaml(KUBE / "service.yaml")["metadata"]["name"]
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    pods = ["bench-0", "bench-1"]
    duration = 2.0
    with lab([service, *pods]) as net:
        server = net.start(service, local_command(entrypoint + served["args"]),
                           local_env({**runtime.env, **env_of(served)}))
        server.wait_for(r"Server at ", timeout=20)
        start = time.time() + 3
        start_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)) + \
            f".{int(start * 1000) % 1000:03d}Z"
        env = {**env_of(container), "START_AT": start_at}
        args = with_option(expand(container["args"], env), "--duration", f"{duration:g}")
        runs = {i: net.popen(pod, local_command(entrypoint + args), local_env(
                    {**runtime.env, **env, "JOB_COMPLETION_INDEX": str(i)}))
                for i, pod in enumerate(pods)}
        try:
            url = (f"http://{pods[0]}:{annotations['prometheus.io/port']}"
                   f"{annotations['prometheus.io/path']}")
            counted = wait_until(f"{url} counts messages", lambda: scraped_messages(
                net, service, url), timeout=start + duration + 5 - time.time(),
                until=lambda n: n > 0, every=0.2)
            ended = {i: proc.communicate(timeout=start + duration + 20 - time.time())
                     for i, proc in runs.items()}
        finally:
            for proc in runs.values():
                proc.kill()
                proc.wait(10)
        server.stop()
    logs = []
    for i, (stdout, stderr) in ended.items():
        assert runs[i].returncode == 0, (stdout, stderr)
        assert re.fullmatch(rf"Waiting [\d.]+ s to start at {re.escape(start_at)}\n", stderr), \
            stderr
        document = json.loads(stdout)  # stdout: one JSON document and nothing else
        assert document["index"] == i and document["format"] == 1
        assert document["messages"] > 0 and document["integrity_failures"] == 0
        assert abs(document["started_at"] - start) < 0.1, (document["started_at"], start)
        log = tmp_path / f"pytcpecho-bench-{i}.json"
        log.write_text(stdout)
        logs.append((log, document))
    need_merge()
    result = cli("merge", "--json", *(str(log) for log, _ in logs))
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    assert merged["merged"]["inputs"] == len(pods)
    assert merged["messages"] == sum(d["messages"] for _, d in logs)
    assert merged["format"] == 1
    text = cli("merge", *(str(log) for log, _ in logs))
    assert text.returncode == 0, text.stderr
    sys.stdout.write(f"\n# {url} mid-run: {counted:g} messages\n"
                     f"$ pytcpecho merge {' '.join(log.name for log, _ in logs)}\n"
                     f"{text.stdout}")


def need_merge() -> None:
    require(None if importlib.util.find_spec("pytcpecho.merge") else
            "pytcpecho merge is not written yet (pytcpecho/merge.py)",
            "pytcpecho/merge.py is missing")


RECIPE_LOGS = 'kubectl logs "$pod" > "${pod#pod/}.json"'
"""The README's (and the manifest's) way to keep each pod's log for merge: as it is."""


@pytest.fixture(scope="module")
def pod_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `kubectl logs POD > FILE` writes for a pod of the Job: its stderr and stdout in
    one stream, as the container runtime keeps them (the wait line, then the document)."""
    log = tmp_path_factory.mktemp("kubectl-logs") / "pytcpecho-bench-0.log"
    with running_server() as server, log.open("w") as out:
        ran = subprocess.run(
            [sys.executable, "-m", "pytcpecho", "bench", f"127.0.0.1:{server.address[1]}",
             "--start-at", f"{time.time() + 1.5:.3f}", "--duration", "0.5", "--rate", "200",
             "--json"], stdout=out, stderr=subprocess.STDOUT,
            env=local_env({"JOB_COMPLETION_INDEX": "0"}), timeout=30)
    assert ran.returncode == 0, log.read_text()
    assert log.read_text().startswith("Waiting "), log.read_text()[:200]
    return log


@pytest.mark.timeout(60)
def test_merge_takes_a_pod_log_as_kubectl_logs_gives_it(pod_log: Path) -> None:
    """The log as the README's recipe keeps it (the wait line, then the document) is an
    input merge takes: it passes over bench's own waiting line."""
    assert RECIPE_LOGS in (ROOT / "README.md").read_text()
    assert RECIPE_LOGS in JOB.read_text()
    need_merge()
    result = cli("merge", "--json", str(pod_log))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["merged"]["inputs"] == 1
