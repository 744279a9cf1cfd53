"""Shared helpers for deploy/tests: paths, the real binary and its listeners, kustomize rendering, metric names, gRPC
health, the model card."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
# Where cargo put the release binary: the Makefile exports DRSN_SERVE_BIN (it follows CARGO_TARGET_DIR).
BIN = Path(
    os.environ.get("DRSN_SERVE_BIN")
    or Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "release" / "drsn-serve"
)
FIXTURES = REPO / "models" / "training" / "tests" / "fixtures" / "cwru_mini" / "0HP"
METRICS_RS = REPO / "src" / "telemetry" / "metrics.rs"
CARD = REPO / "models" / "drsn_cw_cwru.json"

# The binary's listeners: the container port name each has in deploy/ (Deployment, Service, image, compose) and the
# environment variable that sets its address. test_manifests checks these are all that `serve --help` lists.
LISTENERS = {"grpc": "DRSN_LISTEN", "http": "DRSN_HTTP_LISTEN", "metrics": "DRSN_METRICS_LISTEN"}

# Everything `kubectl kustomize` must render; components are rendered through a temporary kustomization.
TARGETS = {
    "cpu": ("overlays/cpu", []),
    "gpu": ("overlays/gpu", []),
    "cpu+tls": ("overlays/cpu", ["components/tls"]),
    "gpu+tls": ("overlays/gpu", ["components/tls"]),
    "monitoring": ("monitoring", []),
}


def binary() -> Path:
    assert BIN.is_file(), f"{BIN} is missing: run `make build` (make deploy-test builds it first)"
    return BIN


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl (with its built-in kustomize) is needed to render deploy/kubernetes; it is not on PATH"
    return path


@functools.cache
def render(target: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize` renders for one entry of TARGETS."""
    base, components = TARGETS[target]
    if not components:
        return _kustomize(KUBE / base)
    # kustomize takes only relative paths to other kustomizations: a temporary one points back here.
    tmp = Path(tempfile.mkdtemp(prefix="drsn-kustomize-"))
    try:
        (tmp / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(KUBE / base, tmp)],
                    "components": [os.path.relpath(KUBE / c, tmp) for c in components],
                }
            )
        )
        return _kustomize(tmp)
    finally:
        shutil.rmtree(tmp)


def _kustomize(path: Path) -> tuple[dict, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def one(objs, kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def model_card() -> dict:
    """The shipped model card (name, input.window, ...): tests size their windows from it, never by hand."""
    return json.loads(CARD.read_text())


def pod_configmap_env(objs) -> dict[str, str]:
    """The DRSN_* settings the Deployment's pods get from their ConfigMap(s)."""
    dep = one(objs, "Deployment", "drsn-serve")
    env: dict[str, str] = {}
    for c in dep["spec"]["template"]["spec"]["containers"]:
        for src in c.get("envFrom", []):
            env.update(one(objs, "ConfigMap", src["configMapRef"]["name"])["data"])
    return env


@functools.cache
def help_env_names(command: str) -> frozenset[str]:
    """Environment variables `drsn-serve COMMAND --help` documents (`[env: NAME=...]` or `[env: NAME]`)."""
    out = subprocess.run([str(binary()), command, "--help"], capture_output=True, text=True, timeout=30, check=True)
    names = frozenset(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", out.stdout))
    assert len(names) > 20 if command == "serve" else names, f"no env names parsed from `{command} --help`"
    return names


@functools.cache
def help_text(command: str) -> str:
    out = subprocess.run([str(binary()), command, "--help"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def require_machine_metrics() -> Path:
    """The binary, if it has the per-machine condition: `serve --machine-metrics` and `replay --machine-id`. A
    binary without them fails the tests that need them, saying so: they do not skip."""
    exe = binary()
    missing = [
        f"`{command} {flag}`"
        for command, flag in (("serve", "--machine-metrics"), ("replay", "--machine-id"))
        if not re.search(rf"(?<![\w-]){flag}\b", help_text(command))
    ]
    assert not missing, (
        f"{exe} has no {' or '.join(missing)}: it was built before the per-machine condition (src/) landed. "
        "Rebuild it (`make build`) from a tree that has it; these tests need it and do not skip."
    )
    return exe


def local_pod_env() -> dict[str, str]:
    """The CPU overlay's ConfigMap settings, with the model path of this checkout instead of the image's."""
    env = pod_configmap_env(render("cpu"))
    env["DRSN_MODEL"] = str(REPO / "models" / env["DRSN_MODEL"].removeprefix("/app/models/"))
    return env


def long_recording(source: Path, dest: Path, seconds: float) -> Path:
    """The drive-end signal of a CWRU .mat excerpt repeated end to end for `seconds`, written as a float32 WAV at
    the rate CWRU recorded it (48 kHz for a healthy baseline `normal_*`, 12 kHz for a fault file) so that `replay`
    sends it at that rate and the server resamples what is not 12 kHz: long enough for a machine's condition to
    settle while a real-time replay runs. Two recordings written under the same file name (in different folders)
    replay as the same sensor."""
    import numpy as np
    import scipy.io
    import scipy.io.wavfile

    rate_hz = 48_000 if source.name.startswith("normal_") else 12_000
    (signal,) = [v for k, v in scipy.io.loadmat(source).items() if k.endswith("_DE_time")]
    signal = np.asarray(signal, dtype=np.float32).ravel()
    n = int(seconds * rate_hz)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.wavfile.write(dest, rate_hz, np.tile(signal, -(-n // len(signal)))[:n])
    return dest


class MachineReplay:
    """Real-time replays of one recording as one machine (`replay --machine-id`), started again whenever one ends,
    until stopped."""

    def __init__(self, grpc_addr: str, recording: Path, machine_id: str):
        self.args = [
            str(binary()),
            "replay",
            "--addr",
            f"http://{grpc_addr}",
            "--realtime",
            "--quiet",
            "--machine-id",
            machine_id,
            str(recording),
        ]
        self.machine_id, self.runs, self.failures = machine_id, 0, []
        self.proc: subprocess.Popen | None = None
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            with self.lock:
                if self.stop_event.is_set():
                    return
                self.proc = subprocess.Popen(
                    self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO
                )
            _, err = self.proc.communicate()
            self.runs += 1
            if self.proc.returncode != 0 and not self.stop_event.is_set():
                self.failures.append(err[-2000:])
                time.sleep(1)

    def stop(self) -> None:
        with self.lock:
            self.stop_event.set()
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
        self.thread.join(30)


class Webhook:
    """A tiny HTTP server on loopback collecting what Alertmanager posts to a webhook receiver."""

    def __init__(self):
        self.received: list[dict] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, **json.loads(body or b"{}")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict]:
        """Every alert of every notification, in order, each with the notification's receiver."""
        return [{**a, "receiver": n.get("receiver")} for n in list(self.received) for a in n.get("alerts", [])]

    def summary(self) -> str:
        lines = [f"{a['receiver']}: {a['status']} {json.dumps(a['labels'], sort_keys=True)}" for a in self.alerts()]
        return "\n".join(lines) or "(nothing received)"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alertmanager_exe() -> str | None:
    """Alertmanager: Debian's package `prometheus-alertmanager` names it so; upstream's is `alertmanager`."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Alertmanager:
    """A real Alertmanager in a temporary directory with the given configuration, alone (no cluster peers)."""

    def __init__(self, config: dict, workdir: Path):
        exe = alertmanager_exe()
        assert exe, "Alertmanager (Debian package `prometheus-alertmanager`) is needed; .ci/run installs it"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.logfile = workdir / "alertmanager.log"
        self.log = open(self.logfile, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={self.config}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_ready(self, "alertmanager")

    def alerts(self) -> list[dict]:
        """GET /api/v2/alerts: every alert it holds, active, silenced and inhibited, with its status."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as r:
            return json.load(r)

    def post_alerts(self, alerts: list[dict]) -> None:
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@functools.cache
def help_listen_env_names() -> frozenset[str]:
    """The environment variables of the listen addresses `drsn-serve serve --help` documents (DRSN_*LISTEN)."""
    return frozenset(n for n in help_env_names("serve") if re.fullmatch(r"DRSN_(\w+_)?LISTEN", n))


@functools.cache
def exported_metrics() -> dict[str, str]:
    """Metric name -> kind (counter, gauge, histogram), from src/telemetry/metrics.rs."""
    text = METRICS_RS.read_text()
    consts = dict(re.findall(r'pub(?:\(crate\))? const ([A-Z_]+): &str = "(drsn_[a-z0-9_]+)";', text))
    kinds = {}
    for kind, const in re.findall(r"describe_(counter|gauge|histogram)!\(\s*([A-Z_]+)", text):
        kinds[consts[const]] = kind
    assert consts and set(kinds) == set(consts.values()), "every metric constant should be described"
    return kinds


# A metric name in PromQL: drsn_... not part of a recording-rule name (those have colons).
METRIC_RE = re.compile(r"(?<![\w:])(drsn_[a-z0-9_]+)(?![\w:])")


def metric_names_in(expr: str) -> set[str]:
    return set(METRIC_RE.findall(expr))


def is_exported(name: str) -> bool:
    kinds = exported_metrics()
    if name in kinds:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in ("bucket", "sum", "count") and kinds.get(base) == "histogram"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real drsn-serve with every listener (gRPC, REST, metrics) on an ephemeral loopback port, so parallel runs
    and CI never collide; addresses read from its JSON SERVING log line, also by port name in `addrs`."""

    def __init__(self, env: dict[str, str] | None = None, args: list[str] | None = None):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DRSN_")}
        full_env.update(env or {})
        full_env.update({name: "127.0.0.1:0" for name in LISTENERS.values()})
        full_env["DRSN_LOG_FORMAT"] = "json"
        self.proc = subprocess.Popen(
            [str(binary()), "serve", *(args or [])],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.grpc_addr = self.metrics_addr = self.http_addr = None
        self.addrs: dict[str, str] = {}
        ready = threading.Event()
        self.reader = threading.Thread(target=self._read, args=(ready,), daemon=True)
        self.reader.start()
        if not ready.wait(60) or self.grpc_addr is None:
            self.stop()
            raise AssertionError("server did not report SERVING:\n" + "\n".join(self.lines[-20:]))

    def _read(self, ready: threading.Event) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if self.grpc_addr is None and '"SERVING"' in line:
                fields = json.loads(line)["fields"]
                self.grpc_addr, self.metrics_addr = fields["grpc_addr"], fields["metrics_addr"]
                self.http_addr = fields["http_addr"]
                self.addrs = {"grpc": self.grpc_addr, "http": self.http_addr, "metrics": self.metrics_addr}
                ready.set()
        ready.set()

    def terminate(self, timeout: float) -> int:
        """SIGTERM (a pod's stop) and the exit code, within timeout seconds; the log is read to its end."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def http_get_json(url: str, params: dict | None = None, timeout: float = 10) -> dict:
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def http_post_json(url: str, body: dict, timeout: float = 10) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.load(r)


def http_status(url: str, timeout: float = 5) -> int:
    """The status of a GET, error statuses included (what a kubelet httpGet probe looks at)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def scrape(metrics_addr: str) -> dict[str, float]:
    """The server's /metrics as {'name{labels}': value} (labels as the server writes them)."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def wait_ready(component, name: str, seconds: float = 30) -> None:
    """Waits for `component` (with .proc, .url, .logfile, .stop()) to answer /-/ready; its log on failure."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert component.proc.poll() is None, f"{name} exited:\n" + component.logfile.read_text()[-3000:]
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{component.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.2)
    component.stop()
    raise AssertionError(f"{name} did not become ready:\n" + component.logfile.read_text()[-3000:])


class Prometheus:
    """Debian's prometheus binary in a temporary directory, with the given config."""

    def __init__(self, config: dict, workdir: Path):
        exe = shutil.which("prometheus")
        assert exe, "the prometheus binary (Debian package `prometheus`) is needed; .ci/run installs it"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = open(workdir / "prometheus.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.logfile = workdir / "prometheus.log"
        wait_ready(self, "prometheus")

    def query(self, expr: str) -> list:
        body = http_get_json(f"{self.url}/api/v1/query", {"query": expr})
        assert body["status"] == "success", body
        return body["data"]["result"]

    def api(self, path: str, params: dict | None = None) -> dict:
        body = http_get_json(f"{self.url}/api/v1/{path}", params)
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def grpc_health(addr: str, timeout: float = 5) -> str:
    """grpc.health.v1.Health/Check for the whole server (service ""): SERVING, NOT_SERVING, ..."""
    import grpc

    statuses = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
    with grpc.insecure_channel(addr) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        # An empty HealthCheckRequest is zero bytes; the response is field 1 (enum status), a varint.
        reply = check(b"", timeout=timeout)
    return statuses[reply[1]] if reply[:1] == b"\x08" else "UNKNOWN"


def grpc_diagnose_raw(addr: str, samples: list[float] | None, nbytes: int | None = None):
    """drsn.v1.Diagnosis/Diagnose with one window, encoded by hand: f32le samples, or nbytes zero bytes (invalid).
    Returns (grpc.StatusCode, reply bytes or None)."""
    import struct

    import grpc

    payload = struct.pack(f"<{len(samples)}f", *samples) if samples is not None else bytes(nbytes or 0)
    window = b"\x0a" + _varint(len(payload)) + payload  # Window.f32le = 1
    request = b"\x0a" + _varint(len(window)) + window  # DiagnoseRequest.windows = 1
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary("/drsn.v1.Diagnosis/Diagnose")
        try:
            return grpc.StatusCode.OK, call(request, timeout=10)
        except grpc.RpcError as e:
            return e.code(), None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
