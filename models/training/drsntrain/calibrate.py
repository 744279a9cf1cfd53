"""Calibration that holds out of range: the softmax temperature and the confidence below which a window is reported
as uncertain, fitted on the logits fold models gave for loads they never saw.

The fit uses the extrapolation folds (held-out loads outside the loads trained on: where a plant's machine at a new
load is), cross-fitted by load: the numbers reported for the windows of a load come from a fit on the other loads'
windows only. Every noise cell of the evaluation grid and the clean windows count alike. The expected calibration
error (ECE, 15 equal-width confidence bins) is reported before and after temperature scaling. The interpolation fold
is judged with the same temperature and threshold; when a fit of its own would differ, the pair that keeps the
asked precision on both is shipped (`choose`).
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


# Arrays of a held-out file that are not logits of a cell.
META_KEYS = ("labels", "recording", "load", "hop")


def by_load(heldout: dict) -> dict[int, dict]:
    """One run's held-out logits split by the load each window came from (a cell's logits repeat the windows once
    per noise realisation)."""
    labels = heldout["labels"]
    loads = heldout.get("load")
    if loads is None:
        raise ValueError("held-out logits without the load of each window: rerun the study")
    out = {}
    for load in np.unique(loads):
        mask = loads == load
        part = {"labels": labels[mask]}
        for key, logits in heldout.items():
            if key not in META_KEYS:
                part[key] = logits[np.tile(mask, len(logits) // len(labels))]
        out[int(load)] = part
    return out


def pooled(heldout: dict) -> tuple[np.ndarray, np.ndarray]:
    """All cells of one run's held-out logits, with their labels."""
    labels = heldout["labels"]
    cells = [k for k in heldout if k not in META_KEYS]
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


def judge(logits: np.ndarray, labels: np.ndarray, temperature: float, uncertain_below: float) -> dict:
    """ECE, coverage and accuracy above the threshold of windows scored with a given temperature and threshold."""
    probs = softmax(logits, temperature)
    sure = probs.max(1) >= uncertain_below
    right = probs.argmax(1) == labels
    return {
        "ece": ece(probs, labels),
        "coverage": float(sure.mean()),
        "accuracy_above": float(right[sure].mean()) if sure.any() else None,
        "windows": len(labels),
    }


def choose(extrapolation: list[dict], interpolation: list[dict]) -> dict:
    """The calibration to ship, from the held-out logits of the extrapolation folds' runs and of the interpolation
    fold's runs: fitted on extrapolation (cross-fitted by load for its report), judged on interpolation; a fit on
    interpolation alone is judged on both as well, and the pair that keeps the asked precision on both (the higher
    worst-case accuracy above its threshold) is chosen."""
    per_load: dict[int, list[dict]] = {}
    for h in extrapolation:
        for load, part in by_load(h).items():
            per_load.setdefault(load, []).append(part)
    fitted = calibrate(per_load)
    x_logits, x_labels = (
        np.concatenate(a) for a in zip(*[pooled(p) for ps in per_load.values() for p in ps], strict=True)
    )
    i_logits, i_labels = (np.concatenate(a) for a in zip(*[pooled(h) for h in interpolation], strict=True))
    t_i = fit_temperature(i_logits, i_labels)
    candidates = {
        "extrapolation": (fitted["temperature"], fitted["uncertain_below"]),
        "interpolation": (t_i, threshold(softmax(i_logits, t_i), i_labels)),
    }
    judged = {
        name: {
            "temperature": t,
            "uncertain_below": c,
            "on_extrapolation": judge(x_logits, x_labels, t, c),
            "on_interpolation": judge(i_logits, i_labels, t, c),
        }
        for name, (t, c) in candidates.items()
    }
    worst = lambda j: min(j["on_extrapolation"]["accuracy_above"] or 0, j["on_interpolation"]["accuracy_above"] or 0)  # noqa: E731
    chosen = max(judged, key=lambda name: (worst(judged[name]), name == "extrapolation"))
    return {
        **fitted,
        "temperature": judged[chosen]["temperature"],
        "uncertain_below": judged[chosen]["uncertain_below"],
        "chosen": chosen,
        "candidates": judged,
        "one_serves_both": abs(candidates["extrapolation"][0] - t_i) / max(t_i, 1e-9) < 0.1,
    }
