"""Calibration on held-out operating conditions: the softmax temperature and the confidence below which a window
is reported as uncertain, fitted on the logits the leave-one-load-out models gave for the load they never saw.

Every noise cell of the evaluation grid and the clean windows count alike. The expected calibration error (ECE,
15 equal-width confidence bins) is reported before and after temperature scaling, cross-fitted: the temperature
used on each fold's windows is fitted on the other folds only.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize_scalar

# Among windows at or above the uncertainty threshold, at least this share must be right (held-out loads, all
# noise cells pooled).
TARGET_PRECISION = 0.99
BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood (searched in log space, 0.05 to 20)."""
    res = minimize_scalar(
        lambda lt: nll(logits, labels, float(np.exp(lt))), bounds=(np.log(0.05), np.log(20.0)), method="bounded"
    )
    return float(np.exp(res.x))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: |accuracy - confidence| per confidence bin, weighted by the bin's share."""
    conf = probs.max(1)
    right = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return float(total)


def threshold(probs: np.ndarray, labels: np.ndarray, precision: float = TARGET_PRECISION) -> float:
    """The lowest confidence c such that windows at or above c are right at least `precision` of the time."""
    conf = probs.max(1)
    right = probs.argmax(1) == labels
    order = np.argsort(-conf, kind="stable")
    c = conf[order]
    precision_at = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    # A threshold takes every window at its confidence: judge it only at the end of each run of equal confidences.
    ends = np.flatnonzero(np.append(c[1:] != c[:-1], True))
    ok = ends[precision_at[ends] >= precision]
    if len(ok) == 0:
        return 1.0
    return float(c[ok[-1]])


def pooled(heldout: dict) -> tuple[np.ndarray, np.ndarray]:
    """All cells of one run's held-out logits, with their labels."""
    labels = heldout["labels"]
    cells = [k for k in heldout if k != "labels"]
    logits = np.concatenate([heldout[k] for k in cells])
    reps = [len(heldout[k]) // len(labels) for k in cells]
    return logits, np.concatenate([np.tile(labels, r) for r in reps])


def calibrate(runs: dict[int, list[dict]]) -> dict:
    """Temperature and threshold from held-out logits, by fold (held-out load) -> runs (seeds).

    Returns the fitted temperature and threshold (on every fold), and per fold the cross-fitted ECE before and
    after scaling, the threshold's coverage (share of windows at or above it) and their accuracy.
    """
    data = {fold: [pooled(h) for h in hs] for fold, hs in runs.items()}
    cat = lambda folds: tuple(np.concatenate(x) for x in zip(*[d for f in folds for d in data[f]], strict=True))  # noqa: E731
    folds = sorted(data)
    per_fold = {}
    for k in folds:
        fit_logits, fit_labels = cat([f for f in folds if f != k] or folds)
        t = fit_temperature(fit_logits, fit_labels)
        c = threshold(softmax(fit_logits, t), fit_labels)
        logits, labels = cat([k])
        before, after = softmax(logits), softmax(logits, t)
        sure = after.max(1) >= c
        per_fold[str(k)] = {
            "temperature": t,
            "ece_before": ece(before, labels),
            "ece_after": ece(after, labels),
            "threshold": c,
            "coverage": float(sure.mean()),
            "accuracy_above": float((after.argmax(1) == labels)[sure].mean()) if sure.any() else None,
            "accuracy_below": float((after.argmax(1) == labels)[~sure].mean()) if (~sure).any() else None,
        }
    logits, labels = cat(folds)
    t = fit_temperature(logits, labels)
    probs = softmax(logits, t)
    c = threshold(probs, labels)
    return {
        "temperature": t,
        "uncertain_below": c,
        "target_precision": TARGET_PRECISION,
        "ece_before": ece(softmax(logits), labels),
        "ece_after": ece(probs, labels),
        "coverage": float((probs.max(1) >= c).mean()),
        "per_fold": per_fold,
        "windows": len(labels),
    }
