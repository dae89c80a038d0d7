"""The container files: linted by real linters, and their commands run as written.

There is no Docker engine here, so the image's commands (ENTRYPOINT, CMD,
HEALTHCHECK and ENV as the Dockerfile writes them) and compose.yaml's services
run on this machine, each service in its own network namespace on a bridge,
finding the server by its service name through a hosts file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from netns import Lab, lab
from recipes import ROOT, Stage, dockerfile, local_command, local_env, tool
from support import require

from pytcpecho import __version__, switch

SEED_CLIENT = ["Connecting to server:8000", "Sent 102400 bytes", "Received 102400 bytes",
               "Client finished."]


def need_tool(name: str) -> str:
    path = tool(name)
    if path is None:
        require(f"{name} is not installed (pip install -e '.[test]')",
                f"{name} is missing: it is in the test extra")
    return path


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return dockerfile()[-1]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- linters ----------------------------------------------------------------------

def test_hadolint_passes() -> None:
    result = subprocess.run([need_tool("hadolint"), "--format", "json", "Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_hadolint_finds_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD pytcpecho serve\n")
    result = subprocess.run([need_tool("hadolint"), "--format", "json", str(bad)],
                            capture_output=True, text=True, timeout=60)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3013", "DL3025"} <= codes, codes


def compose_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_tool("check-jsonschema"), "--builtin-schema",
                           "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_compose_file_validates(tmp_path: Path) -> None:
    result = compose_check(ROOT / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text((ROOT / "compose.yaml").read_text().replace("stop_grace_period: 12s",
                                                                   "stop_grace_period: [12]"))
    assert compose_check(broken).returncode != 0


def kube_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_tool("kubernetes-validate"), "--strict", *map(str, paths)],
                          capture_output=True, text=True, timeout=60)


def test_kubernetes_manifests_validate(tmp_path: Path) -> None:
    manifests = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
    assert {p.name for p in manifests} >= {"deployment.yaml", "service.yaml"}
    result = kube_check(*manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(manifests), result.stdout
    broken = tmp_path / "deployment.yaml"
    broken.write_text((ROOT / "deploy/kubernetes/deployment.yaml").read_text()
                      .replace("replicas: 2", "replicas: two"))
    assert kube_check(broken).returncode != 0


# -- what the files promise ---------------------------------------------------------

def test_dockerfile_shape(runtime: Stage) -> None:
    stages = dockerfile()
    assert len(stages) == 2 and stages[0].name == "builder"
    for stage in stages:  # pinned to a patch release of the same Python
        assert re.fullmatch(r"python:3\.11\.\d+-(slim-)?bookworm", stage.base), stage.base
    assert stages[0].base.split("-")[0] == runtime.base.split("-")[0]
    assert runtime.base.endswith("-slim-bookworm")
    assert "COPY" not in {kw for kw, _ in runtime.instructions}, "runtime gets only the wheel"
    assert "--mount=type=bind,from=builder" in (runtime.last("RUN") or "")
    assert "cython_available()" in (runtime.last("RUN") or "")
    user = runtime.last("USER") or ""
    assert re.fullmatch(r"[1-9]\d+:[1-9]\d+", user), "a numeric non-root USER"
    assert runtime.all("EXPOSE") == ["8000/tcp 8000/udp"]  # mesh and serve --udp: UDP too
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    assert runtime.exec_form("ENTRYPOINT") == ["pytcpecho"]
    assert runtime.exec_form("CMD")[0] == "serve"
    labels = " ".join(runtime.all("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    args = dict(a.partition("=")[::2] for a in runtime.all("ARG"))
    assert args["VERSION"] == __version__


def test_dockerignore_sends_the_sources_only() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "exclude everything, then name what the build needs"
    builder = dockerfile()[0]
    for copy in builder.all("COPY"):
        for source in copy.split()[:-1]:
            assert f"!{source}" in rules, f"{source} is copied but ignored"
    assert "**/*.so" in rules and "csrc/*.c" in rules


def test_kubernetes_matches_the_image(runtime: Stage) -> None:
    deployment = load_yaml(ROOT / "deploy/kubernetes/deployment.yaml")
    service = load_yaml(ROOT / "deploy/kubernetes/service.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    grace = float(env.get("PYTCPECHO_GRACE", runtime.env.get("PYTCPECHO_GRACE", 10)))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + grace + 5
    uid, gid = (int(x) for x in (runtime.last("USER") or "").split(":"))
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid,
                                                                                         gid)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The image's ports, each by its name: echo (TCP) and echo-udp (UDP), the server
    # serving both (PYTCPECHO_UDP), and the Service forwarding both.
    ports = {p["name"]: f"{p['containerPort']}/{p['protocol'].lower()}"
             for p in container["ports"]}
    assert ports == {"echo": "8000/tcp", "echo-udp": "8000/udp"}
    assert set(ports.values()) == set(" ".join(runtime.all("EXPOSE")).split())
    assert switch.flag(env["PYTCPECHO_UDP"]) is True
    assert {p["targetPort"]: f"{p['port']}/{p['protocol'].lower()}"
            for p in service["spec"]["ports"]} == ports
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert container["readinessProbe"]["exec"]["command"] == runtime.healthcheck[1]
    for name in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][name])


# -- the commands, run in network namespaces ------------------------------------------

def serve_and_check_health(net: Lab, runtime: Stage, argv: list[str],
                           env: dict[str, str]) -> Any:
    udp = switch.flag(env.get("PYTCPECHO_UDP") or "0")
    server = net.start("server", local_command(argv), env)
    kinds = "IPv4 and IPv6, TCP and UDP" if udp else "IPv4 and IPv6"
    server.wait_for(rf"^Server at \[::\]:8000 \({kinds}\)$", timeout=20)
    options, health = runtime.healthcheck
    result = net.run("server", local_command(health), env,
                     timeout=float(options["timeout"].rstrip("s")) + 10)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"64 bytes from (127\.0\.0\.1|\[::1\]):8000: intact, time=[\d.]+ ms\n",
                        result.stdout), result.stdout
    for where in ("127.0.0.1:8000", "[::1]:8000"):  # all interfaces: IPv4 and IPv6
        ping = net.run("server", local_command([*health[:-1], where]), env)
        assert ping.returncode == 0 and f"from {where}: intact" in ping.stdout, ping.stdout
    return server


# A client in the middle of a message when the server is told to stop: it sends half,
# waits for a line on stdin, sends the rest and checks the whole echo.
IN_FLIGHT = """
import socket, sys
data = bytes(range(256)) * 400
with socket.create_connection(("server", 8000), timeout=20) as s:
    s.sendall(data[:50000])
    print("half sent", flush=True)
    sys.stdin.readline()
    s.sendall(data[50000:])
    got = b""
    while len(got) < len(data) and (chunk := s.recv(65536)):
        got += chunk
print("intact" if got == data else f"broken after {len(got)} bytes", flush=True)
"""


def stop_within_grace(net: Lab, server: Any, env: dict[str, str], client: str) -> str:
    """SIGTERM with a connection in flight: new clients are refused, that one finishes,
    and the server exits 0 with its summary within the grace period."""
    grace = float(env.get("PYTCPECHO_GRACE", 10))
    flight = net.popen(client, [sys.executable, "-c", IN_FLIGHT], env)
    try:
        assert flight.stdout is not None and flight.stdin is not None
        assert flight.stdout.readline() == "half sent\n"
        server.wait_for(rf"^Connected by client at \('{net.addresses[client]}', \d+\)$")
        server.proc.terminate()
        ping = local_command(["pytcpecho", "ping", "--timeout", "3", "server:8000"])
        for _ in range(50):  # until the server has stopped accepting
            if net.run(client, ping, env).returncode == 3:
                break
        else:
            raise AssertionError("the server still accepts clients after SIGTERM")
        out, _ = flight.communicate("go\n", timeout=grace)
        assert out == "intact\n", out
    finally:
        flight.kill()
        flight.wait(10)
    assert server.proc.wait(grace) == 0, server.output()
    output = server.output()
    assert re.search(r"^Served \d+ connections?, echoed \d+ bytes, 0 errors\b", output,
                     re.M), output
    return output


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_dockerfile_commands_in_a_network_namespace(runtime: Stage) -> None:
    entrypoint, cmd = runtime.exec_form("ENTRYPOINT"), runtime.exec_form("CMD")
    env = local_env(runtime.env)
    with lab(["server", "client"]) as net:
        server = serve_and_check_health(net, runtime, entrypoint + cmd, env)
        # docker run IMAGE client server:8000
        client = net.run("client", local_command([*entrypoint, "client", "server:8000"]), env)
        assert client.returncode == 0, client.stdout + client.stderr
        assert client.stdout.splitlines()[:3] == SEED_CLIENT[:3]
        assert client.stdout.splitlines()[-1] == "Client finished."
        server.wait_for(rf"^Connected by client at \('{net.addresses['client']}', \d+\)$")
        output = stop_within_grace(net, server, env, "client")
    sys.stdout.write(f"\n$ {' '.join(entrypoint + cmd)}  # in namespace 'server'\n{output}\n"
                     f"$ pytcpecho client server:8000  # in namespace 'client'\n{client.stdout}")


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_compose_services_in_network_namespaces(runtime: Stage) -> None:
    compose = load_yaml(ROOT / "compose.yaml")
    services = compose["services"]
    clients = [name for name in services if name != "server"]
    assert len(clients) == 2
    # The server publishes its echo port for TCP and UDP, and serves both.
    assert services["server"]["ports"] == ["8000:8000/tcp", "8000:8000/udp"]
    assert switch.flag(services["server"]["environment"]["PYTCPECHO_UDP"]) is True
    for service in services.values():  # all run the Dockerfile's image, its ENTRYPOINT
        assert service["build"] == "." and "entrypoint" not in service
    for name in clients:
        assert services[name]["depends_on"]["server"]["condition"] == "service_healthy"
        assert services[name]["networks"] == services["server"]["networks"]
    entrypoint = runtime.exec_form("ENTRYPOINT")
    server_env = local_env({**runtime.env, **{k: str(v) for k, v in
                                              services["server"]["environment"].items()}})
    stop_grace = float(services["server"]["stop_grace_period"].rstrip("s"))
    assert float(server_env["PYTCPECHO_GRACE"]) < stop_grace
    with lab(["server", *clients]) as net:
        server = serve_and_check_health(
            net, runtime, entrypoint + services["server"].get("command", runtime.exec_form("CMD")),
            server_env)
        # service_healthy: both clients start now, at once
        runs = {name: net.popen(name, local_command(entrypoint + services[name]["command"]),
                                local_env(runtime.env))
                for name in clients}
        try:
            ended = {name: proc.communicate(timeout=30) for name, proc in runs.items()}
        finally:
            for proc in runs.values():
                proc.kill()
                proc.wait(10)
        outputs = {name: out for name, (out, _) in ended.items()}
        for name, proc in runs.items():
            assert proc.returncode == 0, ended[name]
            assert ended[name][1] == "", ended[name]
            assert outputs[name].splitlines()[:3] == SEED_CLIENT[:3]
            assert outputs[name].splitlines()[-1] == "Client finished."
        peers = {server.wait_for(r"^Connection closed by client at \('(198[\d.]+)', \d+\)$")[1]
                 for _ in clients}
        assert peers == {net.addresses[name] for name in clients}  # one address each
        # The published UDP port: datagrams echoed, verified, none lost.
        udp = net.run(clients[0], local_command(
            [*entrypoint, "ping", "--udp", "--count", "5", "--interval", "0.05", "--timeout",
             "3", "server:8000"]), local_env(runtime.env), timeout=30)
        assert udp.returncode == 0, udp.stdout + udp.stderr
        assert "5 transmitted, 5 received, 0.0% loss, 0 corrupted" in udp.stdout, udp.stdout
        output = stop_within_grace(net, server, server_env, clients[0])
    assert output.count("Received 102400 bytes") == 3  # two clients, one stopped in flight
    assert output.count("Data sent back to client") == output.count("Received ")
    sys.stdout.write(f"\n# compose: server\n{output}\n" + "".join(
        f"# compose: {name}\n{text}" for name, text in outputs.items()))
