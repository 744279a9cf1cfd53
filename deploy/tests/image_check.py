"""The built image, run as a pod would run it (make image-test builds it and runs this file; not collected by
`make deploy-test`, which has no container engine): read-only root with no tmpfs, no capabilities, no new
privileges, published loopback ports (gRPC, REST, metrics), the image's own settings."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import pytest
from support import BIN, FIXTURES, REPO, free_port, grpc_health, http_status

# The healthy baseline, recorded at 48 kHz (the data folder's README): replayed at its rate, resampled by the server.
HEALTHY = FIXTURES / "normal_0_97.mat"

IMAGE = os.environ.get("DRSN_IMAGE", "")
DRAIN_S = 3


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


class Container:
    def __init__(self, name: str, *extra: str):
        self.name, self.grpc_port, self.metrics_port, self.http_port = name, free_port(), free_port(), free_port()
        podman("rm", "-f", name, check=False)
        podman(
            "run", "-d", "--name", name,
            "--read-only", "--read-only-tmpfs=false",  # nothing writable, not even /tmp
            "--cap-drop=ALL", "--security-opt=no-new-privileges",
            "-p", f"127.0.0.1:{self.grpc_port}:50051", "-p", f"127.0.0.1:{self.metrics_port}:9090",
            "-p", f"127.0.0.1:{self.http_port}:8000",
            "-e", f"DRSN_DRAIN_TIMEOUT={DRAIN_S}s", "-e", "DRSN_LOG_FORMAT=json",
            *extra, IMAGE,
        )  # fmt: skip
        self.addr = f"127.0.0.1:{self.grpc_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if grpc_health(self.addr, timeout=2) == "SERVING":
                    return
            except Exception:
                pass
            state = json.loads(podman("inspect", name).stdout)[0]["State"]
            assert state["Running"], "container exited:\n" + self.logs()
            assert time.monotonic() < deadline, "not SERVING after 60s:\n" + self.logs()
            time.sleep(0.5)

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return (out.stdout + out.stderr)[-4000:]

    def remove(self):
        podman("rm", "-f", self.name, check=False)


@pytest.fixture(scope="module")
def container():
    assert IMAGE, "set DRSN_IMAGE (make image-test does)"
    c = Container("drsn-image-test")
    yield c
    c.remove()


def test_image_config():
    (cfg,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    config = cfg["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/usr/local/bin/drsn-serve", "serve"]
    assert set(config["ExposedPorts"]) == {"50051/tcp", "8000/tcp", "9090/tcp"}
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["DRSN_LISTEN"] == "0.0.0.0:50051" and env["DRSN_METRICS_LISTEN"] == "0.0.0.0:9090"
    assert env["DRSN_HTTP_LISTEN"] == "0.0.0.0:8000"
    assert env["ORT_DYLIB_PATH"].startswith("/app/ort/libonnxruntime.so.")


def test_health_serving(container):
    assert grpc_health(container.addr) == "SERVING"


def test_probes_and_rest_answer_through_published_ports(container):
    """What the pod's probes ask (the metrics port) and the KServe V2 REST listener, from outside the container."""
    for path in ("/healthz", "/readyz"):
        assert http_status(f"http://127.0.0.1:{container.metrics_port}{path}") == 200, path
    assert http_status(f"http://127.0.0.1:{container.http_port}/v2/health/ready") == 200


def test_runs_unprivileged(container):
    (info,) = json.loads(podman("inspect", container.name).stdout)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    status = dict(
        line.split(":", 1) for line in open(f"/proc/{info['State']['Pid']}/status").read().splitlines() if ":" in line
    )
    assert status["Uid"].split() == ["65532"] * 4
    assert status["Gid"].split() == ["65532"] * 4
    assert int(status["CapEff"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"


def test_diagnoses_and_exports_metrics(container):
    out = subprocess.run(
        [str(BIN), "replay", "--addr", f"http://{container.addr}", "--quiet", "--sample-rate", "48000", str(HEALTHY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "failed streams: 0" in out.stdout, out.stdout + out.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{container.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "drsn_serving 1" in text
    assert 'drsn_windows_diagnosed_total{api="stream"} 0' not in text


def test_mounted_model():
    """The baked-in model can be replaced by a mounted folder and DRSN_MODEL."""
    c = Container(
        "drsn-image-test-mounted", "-v", f"{REPO / 'models'}:/models:ro", "-e", "DRSN_MODEL=/models/drsn_cw_cwru.json"
    )
    try:
        assert grpc_health(c.addr) == "SERVING"
    finally:
        c.remove()


def test_sigterm_drains(container):
    """What the kubelet sends after preStop: the process drains and exits 0 within the drain timeout."""
    replay = subprocess.Popen(
        [
            str(BIN),
            "replay",
            "--addr",
            f"http://{container.addr}",
            "--realtime",
            "--quiet",
            *map(str, FIXTURES.glob("*.mat")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.1)
        start = time.monotonic()
        podman("kill", "--signal", "TERM", container.name)
        code = podman("wait", container.name, timeout=DRAIN_S + 10).stdout.strip()
        took = time.monotonic() - start
        assert code == "0", container.logs()
        assert took < DRAIN_S + 2, f"exit took {took:.1f}s"
        assert "draining" in container.logs()
    finally:
        replay.wait(30)
