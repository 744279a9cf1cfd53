"""Evaluation on the test segments: the accuracy grid over noise types and SNRs.

Every architecture and seed sees the very same noisy test windows: the noise of each
(type, SNR) cell comes from a fixed seed. Each clean test window gets `repeats` noise
realisations per cell, which narrows the estimate without reusing any sample.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from torch import nn

from .noise import NOISE_TYPES, noisy_copies
from .train import predict

SNR_GRID_DB: tuple[float, ...] = (4.0, 0.0, -4.0, -6.0, -8.0, -10.0)
CLEAN = "clean"


def cell_seed(noise_type: str, snr_db: float) -> int:
    """A fixed seed per cell, the same for every model."""
    return 1_000_000 + 1000 * NOISE_TYPES.index(noise_type) + round(snr_db * 10) + 500


def confusion(y: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def evaluate_grid(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    repeats: int = 4,
    cells: list[tuple[str, float]] | None = None,
    confusion_snr: float = -8.0,
    logits_out: dict | None = None,
) -> dict:
    """Accuracy per cell; for shrinkage models also the mean alpha per cell and window.

    Returns {"accuracy": {"clean": a, "gaussian": {"-8": a, ...}, ...},
    "confusion": {type: matrix at confusion_snr}, "shrinkage": {...} or None}. `logits_out`, when given, receives
    the logits of every cell ("clean", "gaussian-8", ...) and the labels ("labels"), for calibration.
    """
    if cells is None:
        cells = [(t, s) for t in NOISE_TYPES for s in SNR_GRID_DB]
    out: dict = {"accuracy": {}, "confusion": {}, "windows": len(y), "repeats": repeats}
    logits, shrink = predict(model, x)
    classes = logits.shape[1]  # CWRU's 10, or the classes of a manifest's labels
    if logits_out is not None:
        logits_out["labels"], logits_out[CLEAN] = y, logits
    out["accuracy"][CLEAN] = float((logits.argmax(1) == y).mean())
    out["confusion"][CLEAN] = confusion(y, logits.argmax(1), classes).tolist()
    clean_shrink, scores = shrink, {}
    for noise_type, snr in cells:
        xn = noisy_copies(x, noise_type, snr, cell_seed(noise_type, snr), repeats)
        yn = np.tile(y, repeats)
        logits, shrink = predict(model, xn)
        if logits_out is not None:
            logits_out[f"{noise_type}{snr:g}"] = logits
        pred = logits.argmax(1)
        out["accuracy"].setdefault(noise_type, {})[f"{snr:g}"] = float((pred == yn).mean())
        if snr == confusion_snr:
            out["confusion"][noise_type] = confusion(yn, pred, classes).tolist()
        if shrink is not None:
            scores[(noise_type, snr)] = shrink
    out["shrinkage"] = shrinkage_summary(clean_shrink, scores) if clean_shrink is not None else None
    return out


def shrinkage_summary(clean: np.ndarray, scores: dict[tuple[str, float], np.ndarray]) -> dict:
    """How the per-unit mean alpha tracks the injected SNR.

    For each noise type: the mean alpha per unit at each SNR (and clean), and the
    Spearman rank correlation between the injected SNR and, per window, each unit's
    alpha and the mean over units.
    """
    summary: dict = {"clean": clean.mean(0).tolist(), "types": {}}
    for noise_type in NOISE_TYPES:
        snrs = [s for (t, s) in scores if t == noise_type]
        if not snrs:
            continue
        per_snr = {f"{s:g}": scores[(noise_type, s)].mean(0).tolist() for s in snrs}
        alphas = np.concatenate([scores[(noise_type, s)] for s in snrs])
        injected = np.concatenate([np.full(len(scores[(noise_type, s)]), s) for s in snrs])
        per_unit = [float(spearmanr(injected, alphas[:, u]).statistic) for u in range(alphas.shape[1])]
        overall = float(spearmanr(injected, alphas.mean(1)).statistic)
        summary["types"][noise_type] = {
            "mean_alpha_by_snr": per_snr,
            "spearman_per_unit": per_unit,
            "spearman_mean_of_units": overall,
        }
    return summary
