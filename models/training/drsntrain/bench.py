"""CPU inference cost in ONNX Runtime: windows per second at a fixed batch and thread count."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .export import ort_outputs, ort_session


def onnx_throughput(path: Path, windows: np.ndarray, batch: int = 64, threads: int = 1, seconds: float = 3.0) -> dict:
    """Windows/s of repeated runs on one batch of real windows, after a warm-up run."""
    session = ort_session(path, threads=threads)
    reps = int(np.ceil(batch / len(windows)))
    x = np.tile(windows, (reps, 1))[:batch]
    ort_outputs(session, x)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        ort_outputs(session, x)
        runs += 1
    return {
        "batch": batch,
        "threads": threads,
        "windows_per_s": runs * batch / elapsed,
        "ms_per_batch": 1000 * elapsed / runs,
    }
