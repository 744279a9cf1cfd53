"""The real drsn-serve binary for the client tests, and a recording made of the repository's CWRU fixtures."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io

REPO = Path(__file__).resolve().parents[3]
# Where cargo put the release binary: the Makefile exports DRSN_SERVE_BIN (it follows CARGO_TARGET_DIR).
BIN = Path(
    os.environ.get("DRSN_SERVE_BIN")
    or Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "release" / "drsn-serve"
)
FIXTURES = REPO / "models" / "training" / "tests" / "fixtures" / "cwru_mini" / "0HP"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One replica: the release binary on `port` (0: any), one inference worker; its address from the SERVING line."""

    def __init__(self, port: int = 0, args: list[str] | None = None):
        if not BIN.is_file():
            pytest.fail(f"{BIN} is missing: run `make build` (make test builds it first)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRSN_")}
        cmd = [str(BIN), "serve", "--log-format", "json", "--workers", "1", "--listen", f"127.0.0.1:{port}"]
        cmd += ["--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", *(args or [])]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.addr: str | None = None
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(60) or self.addr is None:
            self.kill()
            raise AssertionError("the server did not report SERVING:\n" + "\n".join(self.lines[-20:]))

    def _read(self, ready: threading.Event) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if self.addr is None and '"SERVING"' in line:
                self.addr = json.loads(line)["fields"]["grpc_addr"]
                ready.set()
        ready.set()

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def terminate(self) -> None:
        """SIGTERM, as Kubernetes stops a pod: the server drains and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def kill(self) -> None:
        """SIGKILL: gone without a word."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def servers():
    """Starts replicas on demand; every one is stopped after the test."""
    started: list[Server] = []

    def start(port: int = 0, args: list[str] | None = None) -> Server:
        server = Server(port, args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def lone_server():
    """One replica for a module's tests that interrupt nothing."""
    server = Server()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def recording() -> np.ndarray:
    """The 12 kHz drive-end fault recordings of the fixtures, one after another, twice: about 70 windows whose
    classes change along the way."""
    parts = []
    for path in sorted(FIXTURES.glob("12k_Drive_End_*.mat")):
        data = scipy.io.loadmat(path)
        key = next(k for k in data if k.endswith("_DE_time"))
        parts.append(np.asarray(data[key], dtype=np.float32).ravel())
    assert parts, f"no fixtures in {FIXTURES}"
    one = np.concatenate(parts)
    return np.concatenate([one, one])
