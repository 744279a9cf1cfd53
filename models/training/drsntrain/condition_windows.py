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

The same file holds the SHIPPED model's sequences (models/drsn_cw_cwru.pt, the served model, with the card's
temperature and uncertain_below): the whole healthy baseline, resampled to 12 kHz as the loader now reads it, and
every fault recording of the loads it was trained on, clean and with Gaussian, Laplacian and pink noise at -4 and
-8 dB. The shipped model trained on the first 60% of each of these recordings (the healthy baseline at its true
rate): its healthy sequences show how often the served model calls this healthy signal a fault, its fault sequences
how it behaves on signal it mostly trained on (no generalisation estimate).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .calibrate import calibrate, fit_temperature, pooled, softmax, threshold
from .data import CLASSES, SAMPLE_RATE_HZ, SPLIT, Recording, leave_one_load_out, split_fractions, split_windows
from .evaluate import cell_seed, evaluate_grid
from .noise import NOISE_TYPES, noisy_copies
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
FOLD_DECIMALS = 4  # confidences of the fold sequences

# The shipped model's pass: every noise type at -4 and -8 dB, the loads the card was trained on, many draws of the
# short healthy baseline. Its noise comes from its own seeds (cell_seed + an offset), so no draw repeats one of the
# fold pass.
SHIPPED_CELLS: tuple[tuple[str | None, float | None], ...] = (
    (None, None),
    *((kind, snr) for kind in NOISE_TYPES for snr in (-4.0, -8.0)),
)
SHIPPED_LOADS: tuple[int, ...] = (0, 1, 2)
SHIPPED_REALISATIONS = 4
SHIPPED_HEALTHY_REALISATIONS = 32
SHIPPED_FAULT_SEED_OFFSET = 200_000
SHIPPED_HEALTHY_SEED_OFFSET = 300_000
# The shipped sequences are most of the file: 3 decimals keep it small. A confidence that 3 decimals would move
# across uncertain_below keeps as many more as it needs to stay on its side (see rounded).
SHIPPED_DECIMALS = 3


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


@dataclass
class Shipped:
    """The served model and the card's calibration."""

    model: torch.nn.Module
    temperature: float
    uncertain_below: float
    version: str


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
    shipped: Shipped | None = None,
    shipped_options: dict | None = None,
) -> dict:
    """The document written to condition_windows.json.gz (without "notes" and the shipped block's "note"): the fold
    models' sequences, then, when `shipped` is given, the shipped model's (shipped_sequences, with shipped_options)."""
    hop = hop or int(window * DEFAULT_HOP_FRACTION)
    fold_rows, sequences = [], []
    for fold in folds:
        _, held = leave_one_load_out(recordings, fold.heldout_load)
        cut = [stream_windows(r.signal, window, hop) for r in held]
        healthy = [i for i, r in enumerate(held) if r.label == "normal"]
        right: dict[str, list[bool]] = {}
        for kind, snr in cells:
            cell = _cell_name(kind, snr)
            reps = 1 if kind is None else realisations
            seed = None if kind is None else cell_seed(kind, snr)
            # (recording index, realisation) -> (labels, confidences)
            draws = _draws(fold.model, fold.temperature, [x for x, _ in cut], kind, snr, seed, reps)
            if kind is not None and healthy_realisations > reps:
                for i in healthy:
                    more = healthy_realisations - reps
                    extra = _draws(
                        fold.model, fold.temperature, [cut[i][0]], kind, snr, seed + HEALTHY_SEED_OFFSET, more
                    )
                    draws.update({(i, reps + r): v for (_, r), v in extra.items()})
            for (i, r), (lab, con) in sorted(draws.items()):
                rec = held[i]
                right.setdefault(cell, []).extend((lab == rec.class_index).tolist())
                sequences.append(
                    _sequence("fold", fold.heldout_load, rec, kind, snr, r, cut[i][1], lab, con, FOLD_DECIMALS)
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
    doc = {
        "classes": list(CLASSES),
        "window": window,
        "hop": hop,
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "folds": fold_rows,
        "sequences": sequences,
    }
    if shipped is not None:
        rows, summary = shipped_sequences(recordings, shipped, window, hop, **(shipped_options or {}))
        doc["sequences"] = sequences + rows
        doc["shipped"] = summary
    return doc


def shipped_sequences(
    recordings: list[Recording],
    shipped: Shipped,
    window: int,
    hop: int,
    loads: tuple[int, ...] = SHIPPED_LOADS,
    realisations: int = SHIPPED_REALISATIONS,
    healthy_realisations: int = SHIPPED_HEALTHY_REALISATIONS,
    cells: tuple[tuple[str | None, float | None], ...] = SHIPPED_CELLS,
) -> tuple[list[dict], dict]:
    """(sequences, the file's "shipped" block without its note): the shipped model on every whole recording at
    `loads` (fault recordings and the healthy baseline, not split by load), cut as the server cuts a stream. Fault
    recordings get `realisations` noise draws per cell, the healthy recordings `healthy_realisations`, each group from
    its own fixed seed per cell; clean once."""
    streams = [r for r in recordings if r.load_hp in loads]
    faults = [i for i, r in enumerate(streams) if r.label != "normal"]
    healthy = [i for i, r in enumerate(streams) if r.label == "normal"]
    cut = [stream_windows(r.signal, window, hop) for r in streams]
    normal = CLASSES.index("normal")
    sequences, accuracy, false_fault = [], {}, {}
    for kind, snr in cells:
        draws: dict = {}
        for group, reps, offset in (
            (faults, realisations, SHIPPED_FAULT_SEED_OFFSET),
            (healthy, healthy_realisations, SHIPPED_HEALTHY_SEED_OFFSET),
        ):
            if not group:
                continue
            reps = 1 if kind is None else reps
            seed = None if kind is None else cell_seed(kind, snr) + offset
            got = _draws(shipped.model, shipped.temperature, [cut[i][0] for i in group], kind, snr, seed, reps)
            draws.update({(group[j], r): v for (j, r), v in got.items()})
        right, alarms = [], []  # alarms: (labelled a fault, confidence) of every healthy window
        for (i, r), (lab, con) in sorted(draws.items()):
            rec = streams[i]
            seq = _sequence(
                "shipped", -1, rec, kind, snr, r, cut[i][1], lab, con, SHIPPED_DECIMALS, shipped.uncertain_below
            )
            sequences.append(seq)
            if rec.label == "normal":
                alarms += [(c != normal, p) for c, p in zip(seq["label"], seq["confidence"], strict=True)]
            else:
                right += (lab == rec.class_index).tolist()
        cell = _cell_name(kind, snr)
        accuracy[cell] = round(float(np.mean(right)), 4) if right else None
        n_fault = sum(a for a, _ in alarms)
        n_sure = sum(a and p >= shipped.uncertain_below for a, p in alarms)
        false_fault[cell] = {
            "windows": len(alarms),
            "labelled_fault": n_fault,
            "labelled_fault_at_or_above_uncertain_below": n_sure,
            "share": round(n_fault / len(alarms), 4) if alarms else None,
            "share_at_or_above_uncertain_below": round(n_sure / len(alarms), 4) if alarms else None,
        }
    summary = {
        "temperature": shipped.temperature,
        "uncertain_below": shipped.uncertain_below,
        "version": shipped.version,
        "loads": list(loads),
        "recordings": [streams[i].path.stem for i in faults + healthy],
        "healthy_recordings": [streams[i].path.stem for i in healthy],
        "windows_per_sequence": {streams[i].path.stem: len(cut[i][1]) for i in faults + healthy},
        "healthy_windows": sum(len(cut[i][1]) for i in healthy),
        "realisations": realisations,
        "healthy_realisations": healthy_realisations,
        "cells": [_cell_name(k, s) for k, s in cells],
        "trained_segments": {name: list(bounds) for name, bounds in SPLIT.items()},
        "accuracy": accuracy,
        "healthy_labelled_fault": false_fault,
    }
    return sequences, summary


def _cell_name(kind: str | None, snr: float | None) -> str:
    return "clean" if kind is None else f"{kind}{snr:g}"


def _draws(
    model: torch.nn.Module,
    temperature: float,
    streams: list[np.ndarray],
    kind: str | None,
    snr: float | None,
    seed: int | None,
    reps: int,
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """{(stream index, realisation): (labels, confidences)} of the model on the windows of every stream (each an
    array (k, window)), clean (reps 1) or with `reps` noise draws at an exact per-window SNR, every stream's windows
    noised together from one seed."""
    x_all = np.concatenate(streams)
    offsets = np.cumsum([0] + [len(x) for x in streams])
    xn = x_all if kind is None else noisy_copies(x_all, kind, snr, seed, reps)
    label, conf = _outputs(model, xn, temperature)
    n = len(x_all)
    return {
        (i, r): (label[r * n + offsets[i] : r * n + offsets[i + 1]], conf[r * n + offsets[i] : r * n + offsets[i + 1]])
        for r in range(reps)
        for i in range(len(streams))
    }


def _sequence(
    model: str,
    fold: int,
    rec: Recording,
    kind: str | None,
    snr: float | None,
    realisation: int,
    starts: np.ndarray,
    labels: np.ndarray,
    confidences: np.ndarray,
    decimals: int,
    keep_side_of: float | None = None,
) -> dict:
    return {
        "model": model,
        "fold": fold,
        "recording": rec.path.stem,
        "true_class": rec.label,
        "healthy": rec.label == "normal",
        "noise": kind or "clean",
        "snr_db": _number(snr),
        "realisation": realisation,
        "first_sample": starts.tolist(),
        "label": labels.astype(int).tolist(),
        "confidence": [rounded(float(c), decimals, keep_side_of) for c in confidences],
    }


def rounded(value: float, decimals: int, keep_side_of: float | None = None) -> float:
    """value to `decimals` decimals; with keep_side_of, to as many more as it takes to stay on the same side of it
    (below it, or at or above it), so that a threshold comparison on the rounded value gives the exact answer."""
    out = round(value, decimals)
    while keep_side_of is not None and (out < keep_side_of) != (value < keep_side_of) and decimals < 17:
        decimals += 1
        out = round(value, decimals)
    return out


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
        "Every sequence says which model made it: model 'fold' (what follows) or 'shipped' (fold -1; the served "
        "model itself, described in shipped.note). "
        "Fold models: the shipped recipe's leave-one-load-out fold models (DRSN-CW, seed 0, the runs `make reproduce` "
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
        "softmax of logits / temperature, rounded to 4 decimals (3 for the shipped model's sequences, more for the "
        "few that 3 would move across the card's uncertain_below). "
        "Calibration ('fold'): the fold's temperature and "
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


def shipped_note(card: dict, checkpoint: str) -> str:
    """What the shipped model's sequences are, for the file's shipped.note."""
    loads = ", ".join(str(x) for x in SHIPPED_LOADS)
    noisy = ", ".join(_cell_name(k, s) for k, s in SHIPPED_CELLS if k is not None)
    lo, hi = SPLIT["train"]
    return (
        f"Sequences with model 'shipped' (fold -1): the served model, {card['name']} {card['version']} ({checkpoint}, "
        "the checkpoint its ONNX file was exported from, checked here against the card's golden file), its logits "
        "divided by the card's temperature; uncertain_below is the card's (the service reports a window whose "
        "confidence is below it as uncertain). No cross-fitting: this is the model and calibration users run. "
        f"Recordings, whole and not split by load: every fault recording at {loads} hp (shipped.recordings) and the "
        "healthy baseline (normal_0_97, recorded at 48 kHz, resampled 1:4 to 12 kHz as the loader now reads it), cut "
        "into `window` samples every `hop` in time order; first_sample counts from the recording's start. Noise: "
        f"clean once, and {noisy} at an exact per-window SNR (drsntrain/noise.py), "
        f"{SHIPPED_REALISATIONS} realisations per fault recording and {SHIPPED_HEALTHY_REALISATIONS} for the healthy "
        f"baseline, from fixed seeds per cell (evaluate.cell_seed + {SHIPPED_FAULT_SEED_OFFSET} for the fault "
        f"recordings, + {SHIPPED_HEALTHY_SEED_OFFSET} for the healthy one, so no draw repeats one of the fold "
        "pass). The healthy realisations are noise draws over the same few seconds of signal "
        "(shipped.healthy_windows distinct, overlapping windows), not more signal. "
        f"Training overlap: the shipped model trained on the first {hi - lo:.0%} of every one of these "
        "recordings (its checkpoint was chosen on the next 20%, the last 20% is its test segment; "
        "shipped.trained_segments, fractions of each recording), so more than half of the fault windows are "
        "signal it trained on: the fault sequences show the served model's behaviour, not how well it generalises "
        "(the fold sequences "
        "estimate that). Its healthy training signal was the first 60% of the baseline at its true rate (and of its "
        "fan-end channel): the healthy sequences run over the whole baseline, so most of their windows are signal it "
        "trained on and show how often the served model false-alarms on it, not on another healthy machine. "
        "shipped.accuracy: share of fault windows labelled with their true class, per cell. "
        "shipped.healthy_labelled_fault: per cell, healthy windows labelled any fault class, and how many of those "
        "at or above uncertain_below (confidences have 3 decimals, more where 3 would move one across uncertain_below, "
        "so counting from this file gives the exact answer). Not applied: the "
        "server's input checks (range, clipping, crest factor), which flag a window instead of classifying it."
    )
