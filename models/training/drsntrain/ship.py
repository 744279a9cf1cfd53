"""Ship one trained model: ONNX file, PyTorch checkpoint, model card and golden file."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from .data import CLASSES, SAMPLE_RATE_HZ, SPLIT, Recording, loads, shaft_speed_rpm, split_windows
from .export import (
    INPUT_NAME,
    OPSET,
    export_onnx,
    output_names,
    parity,
    save_checkpoint,
    sha256,
    write_card,
    write_golden,
)
from .model import ARCH_NAMES, DRSN, parameter_count
from .noise import noisy_copies
from .ood import OodStats, WithOod

MODEL_VERSION = "2.1.0"
# A window's worth of hop halves the latency between results at 2x the compute.
DEFAULT_HOP_FRACTION = 0.5
PARITY_TOLERANCE = 1e-4


# The accepted input is the trained range widened by this factor each way (20 dB): the graph standardises each
# window, so any gain in that span gives the same class; beyond it lie wrong units, broken sensors and numbers
# the float32 standardisation cannot carry.
INPUT_MARGIN = 10.0
# Samples exactly at a window's maximum (or minimum) that make it clipped: real CWRU windows reach their peak at
# most twice.
CLIP_SAMPLES = 4
# A window whose crest factor (peak about the mean over the RMS) is above this many times the highest of any clean
# training window is flagged as impulsive: one spike then holds a share of the window's energy no training window
# came near (crest^2 / window of it), and it would rewrite the class (a 10 g spike turned normal windows into a
# fault at high confidence). Noise only lowers the crest factor.
CREST_MARGIN = 1.5


def input_range(recordings: list[Recording], window: int, seed: int = 0, unit: str = "g") -> dict:
    """The model's input contract for the card: RMS (about the window mean) and peak of the training windows,
    clean and with the training noise (mixed types, -12..8 dB), and the range the server accepts."""
    from .train import NoiseProtocol

    x, _ = split_windows(recordings, "train", window)
    gen = torch.Generator().manual_seed(seed)
    noisy = NoiseProtocol().corrupt(torch.from_numpy(x), gen).numpy()
    stats = {}
    for name, w in (("clean", x), ("noisy", noisy)):
        rms = w.std(axis=1)
        centred = w - w.mean(axis=1, keepdims=True)
        crest = np.abs(centred).max(axis=1) / np.maximum(rms, 1e-12)
        stats[name] = {
            "rms": [float(rms.min()), float(rms.max())],
            "peak": float(np.abs(w).max()),
            "crest_max": float(crest.max()),
        }
    return {
        "unit": unit,
        "trained": stats,
        "rms_accepted": [stats["clean"]["rms"][0] / INPUT_MARGIN, stats["noisy"]["rms"][1] * INPUT_MARGIN],
        "peak_accepted": stats["noisy"]["peak"] * INPUT_MARGIN,
        "clip_samples": CLIP_SAMPLES,
        "crest_accepted": round(stats["clean"]["crest_max"] * CREST_MARGIN, 1),
        "note": (
            f"accepted = trained range widened {INPUT_MARGIN:g}x each way; windows outside it, flat windows, "
            f"windows with {CLIP_SAMPLES}+ samples at their extreme value and windows whose crest factor is above "
            f"{CREST_MARGIN:g}x the training windows' highest are flagged, not classified"
        ),
    }


def operating_conditions(recordings: list[Recording]) -> dict:
    """What the model was trained on: motor loads, shaft speeds (from the files), sample rate, sensor."""
    speeds: dict[str, list[float]] = {}
    for r in recordings:
        rpm = shaft_speed_rpm(r.path, r.file_number)
        if rpm is not None:
            speeds.setdefault(str(r.load_hp), []).append(rpm)
    return {
        "loads_hp": loads(recordings),
        "speed_rpm": {load: [min(v), max(v)] for load, v in sorted(speeds.items())},
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "sensor": "drive-end accelerometer (g), CWRU test rig, 6205-2RS JEM SKF deep-groove ball bearing",
        "note": "windows from other loads, speeds, bearings or sensor positions are outside what was tested",
    }


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


def golden_windows(recordings: list[Recording], window: int, per_class: int = 2) -> tuple[np.ndarray, ...]:
    """Per class: `per_class` clean test windows and one at Gaussian -6 dB (NaN SNR = clean)."""
    x, y = split_windows(recordings, "test", window)
    picks = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)])
    noisy_idx = np.array([np.flatnonzero(y == c)[0] for c in np.unique(y)])
    noisy = noisy_copies(x[noisy_idx], "gaussian", -6.0, seed=20_200)
    windows = np.concatenate([x[picks], noisy])
    labels = np.concatenate([y[picks], y[noisy_idx]])
    snr = np.concatenate([np.full(len(picks), np.nan), np.full(len(noisy_idx), -6.0)])
    return windows, labels, snr


def architecture(model: DRSN) -> dict:
    """The card's `architecture` section."""
    cfg = model.config
    return {
        "type": ARCH_NAMES[cfg.shrinkage],
        "shrinkage": cfg.shrinkage,
        "stem_channels": cfg.stem_channels,
        "stem_kernel": cfg.stem_kernel,
        "stem_stride": cfg.stem_stride,
        "stages": [{"channels": c, "units": n} for c, n in cfg.stages],
        "units": cfg.units,
        "parameters": parameter_count(model),
        "in_graph_preprocessing": (
            f"per-window standardisation (x - mean) / sqrt(var + {cfg.standardize_eps:g}), "
            "so the server sends raw samples"
        ),
        "reference": "Zhao et al., Deep Residual Shrinkage Networks for Fault Diagnosis, IEEE TII 16(7), 2020",
    }


def export_checked(
    model: DRSN, onnx_path: Path, metadata: dict[str, str], ood: OodStats | None, windows: np.ndarray
) -> dict:
    """Export `model` (with its out-of-distribution output when `ood` is given) and check ONNX Runtime against
    PyTorch on `windows`; returns the parity figures, raises ParityError beyond PARITY_TOLERANCE."""
    exported = WithOod(model, ood) if ood is not None else model
    export_onnx(model, onnx_path, metadata=metadata, ood=exported if ood is not None else None)
    check = parity(exported, onnx_path, windows)
    if check["max_abs_diff"] > PARITY_TOLERANCE or not check["argmax_equal"]:
        raise ParityError(f"ONNX export disagrees with PyTorch on test windows: {check}")
    return check


def serving_card(
    model: DRSN,
    name: str,
    version: str,
    onnx_path: Path,
    classes: list[str],
    sample_rate_hz: float,
    ood: dict | None = None,
) -> dict:
    """The card's keys up to `default_hop`, in the shipped card's order: what the server reads to run the ONNX file
    (`ood`: the card's `ood` section, when the graph has the `ood_score` output)."""
    cfg = model.config
    names = output_names(model, ood is not None)
    return {
        "name": name,
        "version": version,
        "architecture": architecture(model),
        "onnx": onnx_path.name,
        "sha256": sha256(onnx_path),
        "opset": OPSET,
        "input": {
            "name": INPUT_NAME,
            "channels": 1,
            "window": cfg.window,
            "sample_rate_hz": sample_rate_hz,
            "dtype": "float32",
            "shape": ["batch", 1, cfg.window],
            "scale": "raw accelerometer samples at any gain: the graph standardises each window",
        },
        "normalization": "none",
        "outputs": {
            "logits": "logits",
            "shrinkage": "shrinkage" if "shrinkage" in names else None,
            **({"ood_score": "ood_score"} if ood else {}),
        },
        **({"ood": ood} if ood else {}),
        "shrinkage_units": cfg.units if "shrinkage" in names else 0,
        "classes": list(classes),
        "default_hop": int(cfg.window * DEFAULT_HOP_FRACTION),
    }


def ship(
    model: DRSN,
    name: str,
    out_dir: Path,
    recordings: list[Recording],
    evaluation: dict,
    training: dict,
    calibration: dict | None = None,
    ood: tuple[OodStats, dict] | None = None,
) -> dict:
    """Write <stem>.onnx, <stem>.pt, <stem>.json (card) and <stem>.golden.npz; return the card. `ood`: the
    out-of-distribution statistics, exported in the graph, and the card's `ood` section (its threshold)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    onnx_path = out_dir / f"{stem}.onnx"
    cfg = model.config
    metadata = {"name": name, "version": MODEL_VERSION, "classes": ",".join(CLASSES)}
    x_test, _ = split_windows(recordings, "test", cfg.window)
    check = export_checked(model, onnx_path, metadata, ood[0] if ood else None, x_test)

    save_checkpoint(model, out_dir / f"{stem}.pt")
    windows, labels, snr = golden_windows(recordings, cfg.window)
    golden = out_dir / f"{stem}.golden.npz"
    write_golden(onnx_path, windows, labels, snr, golden)

    card = {
        **serving_card(model, name, MODEL_VERSION, onnx_path, list(CLASSES), SAMPLE_RATE_HZ, ood[1] if ood else None),
        "input_range": input_range(recordings, cfg.window),
        "operating_conditions": operating_conditions(recordings),
        "evaluation": evaluation,
        **({"calibration": calibration} if calibration else {}),
        "training": {
            "data": {
                "source": (
                    "CWRU Bearing Data Center, 12 kHz drive-end accelerometer (X<num>_DE_time); the 48 kHz healthy "
                    "baseline resampled to 12 kHz, its fan-end channel as extra healthy training signal"
                ),
                "recordings": [
                    f"{r.path.parent.name}/{r.path.name}" + ("" if r.channel == "DE" else f" ({r.channel} channel)")
                    for r in recordings
                ],
            },
            "split": {"by": "time within each recording", "fractions": {k: list(v) for k, v in SPLIT.items()}},
            **training,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "golden": golden.name,
        "parity": check,
    }
    write_card(out_dir / f"{stem}.json", card)
    return card
