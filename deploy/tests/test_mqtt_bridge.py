"""deploy/kubernetes/mqtt-bridge: renders and validates strictly; its settings are ones `drsn-serve bridge mqtt`
takes, and with them (addresses made local) the real binary connects to a real broker (mosquitto) and exports the
series its alerts read; the pod is admitted by the server's NetworkPolicy and may reach what it needs."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from support import KUBE, binary, free_port, one, render
from test_manifests import CRD_GROUP, NEWEST, OLDEST

NAME = "drsn-mqtt-bridge"
# What the bridge's close may take (src/bridge/mqtt/mod.rs CLOSE_DEADLINE).
CLOSE_DEADLINE_S = 30


@pytest.fixture(scope="module")
def objs():
    out = subprocess.run(
        [shutil.which("kubectl") or "kubectl", "kustomize", str(KUBE / "mqtt-bridge")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def pod(objs) -> dict:
    return one(objs, "Deployment", NAME)["spec"]["template"]


def env(objs) -> dict[str, str]:
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(NAME)]
    return dict(cm["data"])


def bridge_env_names() -> set[str]:
    out = subprocess.run([str(binary()), "bridge", "mqtt", "--help"], capture_output=True, text=True, check=True)
    return set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", out.stdout))


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_validates_strictly(objs, version):
    for o in objs:
        assert o["metadata"].get("namespace") == "drsn", o["metadata"]
        if not o["apiVersion"].startswith(CRD_GROUP):
            kubernetes_validate.validate(o, version, strict=True)


def test_settings_are_the_bridges(objs):
    (c,) = pod(objs)["spec"]["containers"]
    assert c["command"][-2:] == ["bridge", "mqtt"]
    names = set(env(objs)) | {e["name"] for e in c.get("env", [])}
    assert names <= bridge_env_names(), sorted(names - bridge_env_names())


def test_one_bridge_at_a_time_locked_down_and_given_time_to_close(objs):
    dep = one(objs, "Deployment", NAME)
    # One broker session per client id: never two pods, not even during an update.
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod(objs)["spec"]
    (c,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["terminationGracePeriodSeconds"] >= CLOSE_DEADLINE_S + 5


def test_the_server_admits_it_and_it_may_reach_server_and_broker(objs):
    labels = pod(objs)["metadata"]["labels"]
    server = render("cpu")
    policy = one(server, "NetworkPolicy", "drsn-serve")
    grpc_peers = [r["from"] for r in policy["spec"]["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    selectors = [p.get("podSelector", {}).get("matchLabels", {}) for peers in grpc_peers for p in peers]
    admitted = [s for s in selectors if s.items() <= labels.items()]
    assert admitted, "the server's NetworkPolicy does not admit the bridge's pods"
    egress = one(objs, "NetworkPolicy", NAME)["spec"]["egress"]
    ports = {p["port"] for rule in egress for p in rule["ports"]}
    (server_c,) = one(server, "Deployment", "drsn-serve")["spec"]["template"]["spec"]["containers"]
    grpc = next(p["containerPort"] for p in server_c["ports"] if p["name"] == "grpc")
    broker = urllib.parse.urlsplit(env(objs)["DRSN_MQTT_URL"]).port
    assert {53, grpc, broker} <= ports


def test_prometheus_scrapes_it_as_its_alerts_expect(objs):
    (c,) = pod(objs)["spec"]["containers"]
    port = next(p for p in c["ports"] if p["name"] == "metrics")
    assert env(objs)["DRSN_MQTT_METRICS_LISTEN"].endswith(f":{port['containerPort']}")
    monitor = one(objs, "PodMonitor", NAME)["spec"]
    labels = pod(objs)["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["podMetricsEndpoints"][0]["port"] == "metrics"
    assert labels[monitor["jobLabel"]] == NAME
    rules = (KUBE.parent / "prometheus" / "rules.yml").read_text()
    assert f'up{{job="{NAME}"}}' in rules


def test_the_binary_runs_with_these_settings_against_a_real_broker(objs):
    settings = env(objs)
    port, metrics = free_port(), free_port()
    settings["DRSN_MQTT_URL"] = f"mqtt://127.0.0.1:{port}"
    settings["DRSN_MQTT_METRICS_LISTEN"] = f"127.0.0.1:{metrics}"
    settings["DRSN_ADDR"] = "http://127.0.0.1:1"  # no stream is opened without a sensor's message
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bridge = subprocess.Popen(
            [str(binary()), "bridge", "mqtt"],
            env=settings,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline, text = time.monotonic() + 20, ""
            while "drsn_bridge_mqtt_connected 1" not in text:
                assert time.monotonic() < deadline and bridge.poll() is None, f"bridge never connected: {text}"
                time.sleep(0.2)
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2).read().decode()
                except OSError:
                    text = ""
            for outcome in ("taken", "duplicate", "malformed", "backlog", "sensor_limit"):
                assert f'drsn_bridge_messages_total{{outcome="{outcome}"}} 0' in text
        finally:
            bridge.terminate()
            assert bridge.wait(CLOSE_DEADLINE_S + 5) == 0, bridge.stderr.read()
            broker.kill()
            broker.wait()
