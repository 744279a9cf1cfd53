"""The examples run against a real server: the DAQ gateway with a 16-bit WAV (sent as codes) and with a CSV, and the
multi-sensor gateway with three sensors of two machines over one connection."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from drsn_client import Client, Window

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"
SAMPLES = 60_000


def run(*args: str, example: str = "daq_gateway.py") -> list[str]:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / example), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def labels(lines: list[str]) -> list[str]:
    return [line.rsplit(": ", 1)[1] for line in lines if line.startswith("window ")]


def test_the_daq_gateway_streams_a_csv_and_a_16_bit_wav(tmp_path, recording, lone_server):
    samples = recording[:SAMPLES]
    direct = []
    with Client(lone_server.addr).stream("m", "s", 12_000.0) as stream:
        stream.send(samples)
        stream.close()
        direct = [e.label for e in stream if isinstance(e, Window)]
    assert len(direct) == (SAMPLES - 8192) // 4096 + 1

    csv = tmp_path / "pump.csv"
    np.savetxt(csv, samples, fmt="%.9g")
    lines = run(str(csv), "--rate", "12000", "--addr", lone_server.addr, "--speed", "50")
    assert labels(lines) == direct and lines[-1].startswith("done: resumed 0")

    full_scale = float(np.abs(samples).max()) * 1.1
    codes = np.round(samples / full_scale * 32767).astype("<i2")
    wav = tmp_path / "pump.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(12_000)
        w.writeframes(codes.tobytes())
    lines = run(str(wav), "--scale", str(full_scale), "--addr", lone_server.addr, "--speed", "50")
    # 16-bit codes of the same signal: the same windows, the classes of a signal quantised to 16 bits.
    got = labels(lines)
    assert len(got) == len(direct)
    assert sum(a == b for a, b in zip(got, direct)) >= len(direct) - 1


def test_the_multi_sensor_gateway_streams_every_sensor_of_every_machine(tmp_path, recording, lone_server):
    specs, counts = [], {}
    for n, (ids, length) in enumerate(
        [("pump-7:drive-end", 30_000), ("pump-7:fan-end", 40_000), ("fan-2:bearing", 50_000)]
    ):
        csv = tmp_path / f"{n}.csv"
        np.savetxt(csv, recording[n * 20_000 : n * 20_000 + length], fmt="%.9g")
        specs.append(f"{ids}={csv}")
        counts[ids.replace(":", "/")] = (length - 8192) // 4096 + 1
    lines = run(
        *specs, "--rate", "12000", "--addr", lone_server.addr, "--speed", "50", example="multi_sensor_gateway.py"
    )
    for sensor, count in counts.items():
        indices = [int(x.split("window ")[1].split(":")[0]) for x in lines if x.startswith(f"{sensor} window ")]
        assert indices == list(range(count)), sensor
        assert f"{sensor} done: 0 resume(s)" in lines
