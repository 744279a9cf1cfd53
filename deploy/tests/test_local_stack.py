"""deploy/local-stack.sh runs as documented: server, Prometheus and load come up, windows reach Prometheus, the REST
API answers on its port, and everything it started is gone afterwards."""

from __future__ import annotations

import os
import subprocess

from support import DEPLOY, REPO, binary, free_port


def test_local_stack_runs_and_cleans_up():
    binary()
    # Every port its own (HTTP_PORT too: the default 8000 would collide with parallel runs).
    ports = {"GRPC_PORT": free_port(), "HTTP_PORT": free_port(), "METRICS_PORT": free_port(), "PROM_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "DURATION": "3", "STREAMS": "2"}
    out = subprocess.run(
        ["bash", str(DEPLOY / "local-stack.sh")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "windows diagnosed" in out.stdout
    assert f"REST http://127.0.0.1:{ports['HTTP_PORT']}/v2" in out.stdout
    assert 'REST /v2/health/ready: {"ready":true}' in out.stdout
    # Its processes are gone: nothing listens on its ports, no replay of it is left running.
    for port in ports.values():
        probe = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True)
        assert probe.returncode != 0, f"port {port} still open after the script ended"
    left = subprocess.run(["pgrep", "-f", f"replay --addr http://127.0.0.1:{ports['GRPC_PORT']} "], capture_output=True)
    assert left.returncode == 1, f"replay still running: {left.stdout}"
