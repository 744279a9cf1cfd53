"""What the V2 tests share: where the binary and the shipped model are, and a server process on ephemeral ports."""

import contextlib
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where cargo put the release binary: the Makefile exports DRSN_SERVE_BIN (it follows CARGO_TARGET_DIR).
BINARY = Path(
    os.environ.get("DRSN_SERVE_BIN")
    or Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release" / "drsn-serve"
)
CARD = json.loads((ROOT / "models" / "drsn_cw_cwru.json").read_text())
MODEL = CARD["name"]
WINDOW = CARD["input"]["window"]


@contextlib.contextmanager
def running(args: list[str]):
    """`drsn-serve serve` with `args` on ephemeral ports; its addresses from the SERVING log line. Its later log
    lines are read (and dropped) so that a chatty server never blocks on a full pipe."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make build` (make test builds it first)")
    cmd = [str(BINARY), "serve", *args, "--log-format", "json", "--listen", "127.0.0.1:0"]
    cmd += ["--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        addrs = None
        for line in proc.stderr:
            if "SERVING" in line:
                fields = json.loads(line)["fields"]
                addrs = {k: fields[k] for k in ("grpc_addr", "http_addr", "metrics_addr")}
                break
        assert addrs, "the server did not start"
        threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
        yield addrs
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
