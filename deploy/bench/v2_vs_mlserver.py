"""drsn-serve's Open Inference Protocol endpoint against Seldon MLServer 1.7.1 serving the same ONNX model (adaptive
batching, two workers), and drsn-serve's own drsn.v1 unary call, all driven by the same V2-style gRPC client at the
same concurrency. Prints windows/s, p50/p99 latency, server CPU seconds per 1,000 windows and the client's share of
a core (near 1: the Python client sets the pace), for 1-window and 16-window requests. A benchmark, not a test:
`make bench-v2` (it builds its own venv, .venv-mlserver).

Usage: python deploy/bench/v2_vs_mlserver.py [--seconds 10] [--concurrency 1,8,32]
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CARD = json.loads((ROOT / "models" / "drsn_cw_cwru.json").read_text())
WINDOW = CARD["input"]["window"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, children = 0.0, {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(p.name))
            except (OSError, IndexError):
                pass
    todo = [pid]
    while todo:
        q = todo.pop()
        try:
            fields = (Path("/proc") / str(q) / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            pass
        todo += children.get(q, [])
    return total


def wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def start_drsn() -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = [str(ROOT / "target" / "release" / "drsn-serve"), "serve", "--listen", f"127.0.0.1:{port}"]
    args += ["--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_mlserver(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    model = folder / "drsn"
    model.mkdir(parents=True)
    (model / "model-settings.json").write_text(
        json.dumps(
            {
                "name": CARD["name"],
                "implementation": "runtime.OnnxModel",
                "max_batch_size": 32,
                "max_batch_time": 0.005,
                "parameters": {"uri": str(ROOT / "models" / CARD["onnx"])},
            }
        )
    )
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "parallel_workers": 2,
                "grpc_port": port,
                "http_port": free_port(),
                "metrics_port": free_port(),
                "debug": False,
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "mlserver")}
    mlserver = Path(sys.executable).parent / "mlserver"
    proc = subprocess.Popen(
        [str(mlserver), "start", str(folder)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port)
    time.sleep(5)  # the workers load the model after the port opens
    return proc, port


async def drive(call, windows: np.ndarray, n: int, concurrency: int, seconds: float) -> list[float]:
    """`concurrency` loops sending `n`-window requests for `seconds`; per-request latencies (s)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def loop(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            x = windows[[(i + j) % len(windows) for j in range(n)]]
            t = time.perf_counter()
            await call(x)
            latencies.append(time.perf_counter() - t)
            i += concurrency

    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    return latencies


def v2_call(port: int):
    import tritonclient.grpc.aio as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{port}")

    async def call(x: np.ndarray) -> None:
        inp = tc.InferInput("vibration", [len(x), 1, WINDOW], "FP32")
        inp.set_data_from_numpy(x[:, None, :])
        await client.infer(CARD["name"], [inp])

    return call


def drsn_v1_call(port: int):
    """drsn.v1 Diagnose, with stubs generated from proto/ (grpcio-tools) into a temporary folder."""
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp())
    protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / "proto" / "drsn" / "v1" / "diagnosis.proto"),
        ]
    )
    sys.path.insert(0, str(out))
    import grpc
    from drsn.v1 import diagnosis_pb2 as pb
    from drsn.v1 import diagnosis_pb2_grpc as rpc

    stub = rpc.DiagnosisStub(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))

    async def call(x: np.ndarray) -> None:
        await stub.Diagnose(pb.DiagnoseRequest(windows=[pb.Window(f32le=w.tobytes()) for w in x], detail=1))

    return call


async def measure(name, proc, call, windows, n, concurrency, seconds) -> dict:
    await drive(call, windows, n, concurrency, 1.0)  # warm up
    cpu0, own0, t0 = cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
    lat = await drive(call, windows, n, concurrency, seconds)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
    client_cpu = time.process_time() - own0
    count = len(lat) * n
    return {
        "server": name,
        "windows_per_request": n,
        "concurrency": concurrency,
        "windows_per_s": count / elapsed,
        "p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
        "cpu_s_per_1000_windows": 1000 * cpu / max(count, 1),
        # The Python client's share of one core: near 1.0, the client (not the server) sets the pace.
        "client_cores": client_cpu / elapsed,
    }


async def bench(name, start, windows, levels, seconds) -> list[dict]:
    """Every row for one server; its gRPC clients live in this event loop."""
    rows = []
    proc, port = start()
    try:
        calls = [(name, v2_call(port))]
        if name.startswith("drsn"):
            calls.append(("drsn-serve drsn.v1 unary", drsn_v1_call(port)))
        for label, call in calls:
            for n in (1, 16):
                for c in levels:
                    row = await measure(label, proc, call, windows, n, c, seconds)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    g = np.load(ROOT / "models" / CARD["golden"])
    windows = np.ascontiguousarray(g["windows"].astype(np.float32))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        servers = (("drsn-serve V2", start_drsn), ("MLServer 1.7.1", lambda: start_mlserver(Path(d))))
        for name, start in servers:
            rows += asyncio.run(bench(name, start, windows, levels, args.seconds))
    print(
        "\n| server | windows per request | concurrency | windows/s | p50 ms | p99 ms | CPU s per 1,000 windows "
        "| client cores |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['server']} | {r['windows_per_request']} | {r['concurrency']} | {r['windows_per_s']:,.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_s_per_1000_windows']:.2f} | {r['client_cores']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
