"""One job: the per-window outputs of the shipped recipe's leave-one-load-out fold models (DRSN-CW, seed 0) on the
load each never saw, every recording cut as the server cuts a stream, for a study of a debounced per-machine
condition (NORMAL/FAULT) built on per-window classes. `python -m drsntrain condition-windows` writes them to
models/reports/condition_windows.json.gz.

For each fold (held-out load L): every recording of load L (the 9 fault recordings and the part of the healthy
baseline that stands for load L, the part the fold never trained on; see data.spread_over_loads) is cut into windows
of the model's length at a hop of half a window (the card's default_hop, how the server windows a stream), in time
order. The fold model labels them clean and with noise at an exact per-window SNR (noise.noisy_copies, a fixed seed
per cell as in evaluate.py). Confidences are the calibrated maximum softmax: temperature and uncertainty threshold
are cross-fitted as calibrate.py does (fitted on the other folds' held-out logits), so no fold is calibrated on its
own held-out load.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .calibrate import calibrate, fit_temperature, pooled, softmax, threshold
from .data import CLASSES, SAMPLE_RATE_HZ, Recording, leave_one_load_out, split_fractions, split_windows
from .evaluate import cell_seed, evaluate_grid
from .noise import noisy_copies
from .ship import DEFAULT_HOP_FRACTION
from .train import predict

# (noise type, SNR dB); None, None is the clean signal.
CELLS: tuple[tuple[str | None, float | None], ...] = (
    (None, None),
    ("gaussian", -4.0),
    ("gaussian", -8.0),
    ("laplacian", -8.0),
    ("pink", -8.0),
)
REALISATIONS = 4  # noise draws per noisy cell, every recording (as evaluate.py)
HEALTHY_REALISATIONS = 16  # the healthy part is short: more draws for the false-alarm estimate
# The healthy part's draws beyond the first REALISATIONS come from this seed offset, so that its first draws are
# those of the fault recordings' pass and no draw repeats.
HEALTHY_SEED_OFFSET = 77_000


@dataclass
class Fold:
    """One fold model and the calibration applied to its logits."""

    heldout_load: int
    run: str
    model: torch.nn.Module
    temperature: float
    uncertain_below: float
    calibration: str  # "fold": cross-fitted on the other folds; "card": the shipped card's values
    extra: dict = field(default_factory=dict)


def stream_starts(n: int, window: int, hop: int) -> np.ndarray:
    """First sample of every whole window of an n-sample stream cut every `hop` samples, in time order."""
    if n < window:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n - window + 1, hop, dtype=np.int64)


def stream_windows(signal: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows (k, window), first samples (k,)) of a stream cut every `hop` samples."""
    starts = stream_starts(len(signal), window, hop)
    return signal[starts[:, None] + np.arange(window)] if len(starts) else np.zeros((0, window), signal.dtype), starts


def healthy_part_bounds(recordings: list[Recording], held: Recording) -> tuple[int, int]:
    """Where the held-out healthy part lies in its recording, [start, stop) in samples (found, not assumed)."""
    full = next(r for r in recordings if r.path == held.path and r.label == held.label).signal
    n = len(held.signal)
    for start in np.flatnonzero(full[: len(full) - n + 1] == held.signal[0]):
        if np.array_equal(full[start : start + n], held.signal):
            return int(start), int(start + n)
    raise ValueError(f"{held.path.name}: the held-out part is not a slice of the recording")


def cross_fitted(heldout: dict[int, dict]) -> dict[int, dict]:
    """Per fold, the temperature and threshold calibrate.py fits on the other folds' held-out logits."""
    per_fold = calibrate({k: [h] for k, h in heldout.items()})["per_fold"]
    return {int(k): {"temperature": v["temperature"], "uncertain_below": v["threshold"]} for k, v in per_fold.items()}


def validation_fit(model: torch.nn.Module, recordings: list[Recording], load: int, window: int, train: float) -> dict:
    """For comparison only: temperature and threshold fitted, as calibrate.py fits them, on the fold model's own
    validation segments (the training loads' windows, clean and every noise cell of evaluate.py's grid)."""
    train_recs, _ = leave_one_load_out(recordings, load)
    x, y = split_windows(train_recs, "val", window, split_fractions(train))
    cells: dict = {}
    evaluate_grid(model, x, y, logits_out=cells)
    logits, labels = pooled(cells)
    t = fit_temperature(logits, labels)
    return {
        "temperature": round(t, 4),
        "uncertain_below": round(threshold(softmax(logits, t), labels), 4),
        "windows": len(y),
        "healthy_windows": int((y == CLASSES.index("normal")).sum()),
    }


def _number(snr: float | None) -> int | float | None:
    """-4.0 dB as -4 in the JSON (whole numbers read as integers), a fractional SNR as it is."""
    return None if snr is None else int(snr) if float(snr).is_integer() else float(snr)


def _outputs(model: torch.nn.Module, x: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    logits, _ = predict(model, x)
    p = softmax(logits.astype(np.float64), temperature)
    return p.argmax(1), p.max(1)


def condition_windows(
    recordings: list[Recording],
    folds: list[Fold],
    window: int,
    hop: int | None = None,
    realisations: int = REALISATIONS,
    healthy_realisations: int = HEALTHY_REALISATIONS,
    cells: tuple[tuple[str | None, float | None], ...] = CELLS,
) -> dict:
    """The document written to condition_windows.json.gz (without "notes")."""
    hop = hop or int(window * DEFAULT_HOP_FRACTION)
    fold_rows, sequences = [], []
    for fold in folds:
        _, held = leave_one_load_out(recordings, fold.heldout_load)
        cut = [stream_windows(r.signal, window, hop) for r in held]
        x_all = np.concatenate([x for x, _ in cut])
        offsets = np.cumsum([0] + [len(x) for x, _ in cut])
        healthy = [i for i, r in enumerate(held) if r.label == "normal"]
        right: dict[str, list[bool]] = {}
        for kind, snr in cells:
            cell = "clean" if kind is None else f"{kind}{snr:g}"
            reps = 1 if kind is None else realisations
            xn = x_all if kind is None else noisy_copies(x_all, kind, snr, cell_seed(kind, snr), reps)
            label, conf = _outputs(fold.model, xn, fold.temperature)
            draws = {}  # (recording index, realisation) -> (labels, confidences)
            for r in range(reps):
                for i in range(len(held)):
                    a, b = r * len(x_all) + offsets[i], r * len(x_all) + offsets[i + 1]
                    draws[(i, r)] = (label[a:b], conf[a:b])
            if kind is not None and healthy_realisations > reps:
                for i in healthy:
                    more = healthy_realisations - reps
                    seed = cell_seed(kind, snr) + HEALTHY_SEED_OFFSET
                    xh = noisy_copies(cut[i][0], kind, snr, seed, more)
                    lh, ch = _outputs(fold.model, xh, fold.temperature)
                    k = len(cut[i][0])
                    for r in range(more):
                        draws[(i, reps + r)] = (lh[r * k : (r + 1) * k], ch[r * k : (r + 1) * k])
            for (i, r), (lab, con) in sorted(draws.items()):
                rec = held[i]
                right.setdefault(cell, []).extend((lab == rec.class_index).tolist())
                sequences.append(
                    {
                        "fold": fold.heldout_load,
                        "recording": rec.path.stem,
                        "true_class": rec.label,
                        "healthy": rec.label == "normal",
                        "noise": kind or "clean",
                        "snr_db": _number(snr),
                        "realisation": r,
                        "first_sample": cut[i][1].tolist(),
                        "label": lab.astype(int).tolist(),
                        "confidence": [round(float(c), 4) for c in con],
                    }
                )
        part = held[healthy[0]] if healthy else None
        fold_rows.append(
            {
                "heldout_load": fold.heldout_load,
                "run": fold.run,
                "temperature": round(fold.temperature, 4),
                "uncertain_below": round(fold.uncertain_below, 4),
                "calibration": fold.calibration,
                "recordings": len(held),
                "windows_per_sequence": {r.path.stem: len(c[1]) for r, c in zip(held, cut, strict=True)},
                "healthy_recording": part.path.stem if part else None,
                "healthy_part": list(healthy_part_bounds(recordings, part)) if part else None,
                "healthy_windows": len(cut[healthy[0]][1]) if healthy else 0,
                "healthy_realisations": healthy_realisations,
                "accuracy": {c: round(float(np.mean(v)), 4) for c, v in right.items()},
                **fold.extra,
            }
        )
    return {
        "classes": list(CLASSES),
        "window": window,
        "hop": hop,
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "folds": fold_rows,
        "sequences": sequences,
    }


def write(doc: dict, path: Path) -> int:
    """Gzip JSON (compact; no name or time in the header, so the same outputs give the same bytes wherever they
    are written); returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(doc, separators=(",", ":")).encode()
    with open(path, "wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return path.stat().st_size


def read(path: Path) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def notes(card: dict) -> str:
    """How the file was made, for whoever reads it without this code."""
    return (
        "Made by `python -m drsntrain condition-windows` (models/training/drsntrain/condition_windows.py). "
        "Models: the shipped recipe's leave-one-load-out fold models (DRSN-CW, seed 0, the runs `make reproduce` "
        "trains as lolo-<L>hp/cw-s0), each trained on two loads and run here only on the third (heldout_load). "
        "Recordings: every recording of the held-out load, 9 fault recordings and the healthy baseline. The healthy "
        "baseline exists at 0 hp only and is recorded at 48 kHz: it is resampled to 12 kHz (1:4, band-limited) and "
        "cut by time into three equal parts, part i standing for load i; each fold trains on the other two parts and "
        "is run here on part heldout_load only (folds[].healthy_part: [start, stop) samples of the 12 kHz baseline; "
        "its first_sample count from the part's start). Windows: `window` samples every `hop` samples over the whole "
        "recording (part) in time order, as the server windows a stream by default (the card's default_hop); the "
        "tail shorter than a window is dropped. Noise: added to each window at an exact per-window SNR "
        "(drsntrain/noise.py; each window is noised independently, so noise is not continuous across overlapping "
        "windows), a fixed seed per cell as in evaluate.py; noisy cells gaussian -4 and -8 dB, laplacian and pink "
        f"-8 dB, {REALISATIONS} realisations per fault recording and {HEALTHY_REALISATIONS} for the healthy part "
        f"(its realisations 0-{REALISATIONS - 1} come from the same draw as the fault recordings'); clean once "
        "(realisation 0). Outputs per window: label = argmax class index (into classes), confidence = maximum "
        "softmax of logits / temperature, rounded to 4 decimals. Calibration ('fold'): the fold's temperature and "
        "uncertain_below (the service reports a window whose confidence is below it as uncertain; card field "
        "calibration.uncertain_below) are those calibrate.py cross-fits for that fold: fitted on the other folds' "
        "models' held-out-load logits (clean and every noise cell), so never on this fold's held-out load; 'card' "
        "would mean the shipped card's values (only when a single fold exists). The card's own values "
        f"(temperature {card['calibration']['temperature']}, uncertain_below "
        f"{card['calibration']['uncertain_below']}) were fitted on all three folds' held-out loads, this fold's "
        "included, so they are not used. folds[].validation_fit: for comparison only, the same fit on the fold "
        "model's own validation segments (training loads; they hold no healthy window). folds[].accuracy: share of "
        "windows whose label is the true class, per cell, over every sequence of the fold. The healthy part is "
        "short: folds[].healthy_windows distinct (overlapping) windows stand behind every healthy sequence."
    )
