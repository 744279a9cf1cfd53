"""Out of distribution: how far a window lies from what the model was trained on, as one number per window.

The score is the squared Mahalanobis distance of the window's pooled features (what the classifier reads) to the
nearest class mean, with one covariance shared by the classes (Lee et al., NeurIPS 2018), fitted on training windows
with the training noise. It is computed inside the ONNX graph (output `ood_score`), so the server needs nothing but
the card's threshold: above it a window is reported UNCERTAIN. Two cheaper scores from the logits alone are measured
beside it: the energy score (-logsumexp of the logits, Liu et al. 2020) and 1 - the largest softmax probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import (
    SAMPLE_RATE_HZ,
    Recording,
    all_windows,
    load_drive_end,
    segment,
    sliding_windows,
    source_rate_hz,
)
from .model import DRSN
from .noise import noisy_copies
from .train import NoiseProtocol

# Share of in-range windows (validation segments, training noise) the threshold lets through: 1 in 100 is flagged.
IN_RANGE_QUANTILE = 0.99
# Ridge added to the shared covariance, as a share of its mean variance: 64 features from a few thousand
# correlated windows give a covariance whose smallest eigenvalues are noise.
RIDGE = 1e-3
# Noise draws per training window in the fit (besides the clean window).
NOISE_DRAWS = 2
SCORES = ("mahalanobis", "energy", "max_softmax")


@dataclass(frozen=True)
class OodStats:
    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features), inverse of the shared covariance

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, per row of features."""
        d = features[:, None, :] - self.means[None]
        return np.einsum("ncd,de,nce->nc", d, self.precision, d).min(1)


@torch.no_grad()
def embed(model: DRSN, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of windows x (n, length)."""
    model.eval()
    feats, logits = [], []
    for i in range(0, len(x), batch):
        f, _ = model.embed(torch.as_tensor(x[i : i + batch], dtype=torch.float32).unsqueeze(1))
        feats.append(f)
        logits.append(model.fc(f))
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def with_training_noise(x: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """x and `draws` copies of it corrupted as training corrupts windows (clean share, mixed types and SNRs)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return np.concatenate([x] + [NoiseProtocol().corrupt(t, gen).numpy() for _ in range(draws)])


def segment_windows(
    recordings: list[Recording], split: str, window: int, fractions: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Windows every quarter window over one split of every drive-end recording, with class indices."""
    xs, ys = [], []
    for r in recordings:
        if r.train_only:
            continue
        w = sliding_windows(segment(r.signal, split, fractions), window, window // 4)
        xs.append(w)
        ys.append(np.full(len(w), r.class_index, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def fit(model: DRSN, recordings: list[Recording], fractions: dict | None = None, seed: int = 0) -> OodStats:
    """Class means and shared covariance of the features of the training windows (train segments, clean and with
    the training noise)."""
    x, y = segment_windows(recordings, "train", model.config.window, fractions)
    feats, _ = embed(model, with_training_noise(x, NOISE_DRAWS, seed))
    labels = np.tile(y, NOISE_DRAWS + 1)
    classes = model.config.classes
    means = np.stack([feats[labels == c].mean(0) for c in range(classes)])
    centred = feats - means[labels]
    cov = centred.T @ centred / len(centred)
    cov += RIDGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    return OodStats(means.astype(np.float32), np.linalg.inv(cov).astype(np.float32))


def scores(stats: OodStats, features: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Every candidate score (higher = further from training) of the same windows."""
    z = logits - logits.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1)) + logits.max(1)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return {"mahalanobis": stats.score(features), "energy": -lse, "max_softmax": 1.0 - p.max(1)}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an outside window scores above an inside one (ties count half): 0.5 is chance."""
    both = np.concatenate([inside, outside])
    ranks = np.empty(len(both))
    order = np.argsort(both, kind="mergesort")
    ranks[order] = np.arange(1, len(both) + 1)
    # Average ranks over ties.
    _, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    r_out = ranks[len(inside) :].sum()
    return float((r_out - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def in_range_threshold(
    model: DRSN, stats: OodStats, recordings: list[Recording], fractions: dict | None = None, seed: int = 1
) -> float:
    """The IN_RANGE_QUANTILE of the score over windows the model did not train on but that lie in its range: the
    validation segments of its training loads, clean and with the training noise."""
    x, _ = segment_windows(recordings, "val", model.config.window, fractions)
    feats, _ = embed(model, with_training_noise(x, NOISE_DRAWS, seed))
    return float(np.quantile(stats.score(feats), IN_RANGE_QUANTILE))


class WithOod(nn.Module):
    """The model with a third output, `ood_score` (N,): the score above, for the ONNX export. The shared precision
    P = W W^T is factored once, so a window costs one features x W product and ten squared distances in the whitened
    space, not ten quadratic forms (a tenth of the arithmetic)."""

    def __init__(self, model: DRSN, stats: OodStats):
        super().__init__()
        self.model = model
        whiten = np.linalg.cholesky(stats.precision.astype(np.float64))
        self.register_buffer("whiten", torch.from_numpy(whiten.astype(np.float32)))
        self.register_buffer(
            "white_means", torch.from_numpy((stats.means.astype(np.float64) @ whiten).astype(np.float32))
        )

    def forward(self, x):
        features, shrinkage = self.model.embed(x)
        d = (features @ self.whiten).unsqueeze(1) - self.white_means.unsqueeze(0)
        return self.model.fc(features), shrinkage, d.pow(2).sum(-1).min(-1).values


# Noise cells the score is judged in: clean and the two -8 dB cells that differ most in spectrum.
CELLS: tuple[tuple[str | None, float | None], ...] = ((None, None), ("gaussian", -8.0), ("pink", -8.0))


def _cell(x: np.ndarray, noise_type: str | None, snr: float | None, seed: int) -> np.ndarray:
    return x if noise_type is None else noisy_copies(x, noise_type, snr, seed=seed)


def judge_fold(model: DRSN, train: list[Recording], held: list[Recording], fractions: dict, hop: int) -> dict:
    """One fold model: the score's statistics and threshold from its own training loads, then per cell the AUROC of
    every candidate score for "held-out load" against "training loads' test segments" (windows of neither were
    trained on), the share of each set the threshold flags, and the accuracy of held-out windows kept and flagged."""
    stats = fit(model, train, fractions)
    limit = in_range_threshold(model, stats, train, fractions)
    inside, _ = segment_windows(train, "test", model.config.window, fractions)
    outside, y_out, _ = all_windows(held, model.config.window, hop)
    out: dict = {"threshold": limit, "inside_windows": len(inside), "outside_windows": len(outside), "cells": {}}
    for i, (noise_type, snr) in enumerate(CELLS):
        f_in, l_in = embed(model, _cell(inside, noise_type, snr, 50_000 + i))
        f_out, l_out = embed(model, _cell(outside, noise_type, snr, 60_000 + i))
        s_in, s_out = scores(stats, f_in, l_in), scores(stats, f_out, l_out)
        flagged = s_out["mahalanobis"] > limit
        right = l_out.argmax(1) == y_out
        out["cells"]["clean" if noise_type is None else f"{noise_type}{snr:g}"] = {
            "auroc": {name: auroc(s_in[name], s_out[name]) for name in SCORES},
            "flagged_inside": float((s_in["mahalanobis"] > limit).mean()),
            "flagged_outside": float(flagged.mean()),
            "accuracy_kept": float(right[~flagged].mean()) if (~flagged).any() else None,
            "accuracy_flagged": float(right[flagged].mean()) if flagged.any() else None,
        }
    return out


def mistaken_inputs(recordings: list[Recording]) -> dict[str, list[np.ndarray]]:
    """Inputs a user may send by mistake: the healthy baseline's 48 kHz samples sent as if they were 12 kHz (the rate
    mix-up the training data itself once had), and the fan-end accelerometer of the fault recordings (a sensor
    position the model never saw faulty)."""
    slow, fan_end = [], []
    for r in recordings:
        if r.train_only:
            continue
        if r.label == "normal" and source_rate_hz(r.path.name) != SAMPLE_RATE_HZ:
            slow.append(load_drive_end(r.path, r.file_number))
        elif r.label != "normal":
            fe = load_drive_end(r.path, r.file_number, "FE")
            if fe is not None:
                fan_end.append(fe)
    return {"healthy_48k_sent_as_12k": slow, "fan_end_faults": fan_end}


def far_checks(
    model: DRSN, stats: OodStats, limit: float, recordings: list[Recording], cases: dict[str, list[np.ndarray]]
) -> dict:
    """The shipped model on mistaken inputs (see mistaken_inputs) against its in-range test windows: AUROC of every
    score, the share the threshold flags, and the share called healthy."""
    window = model.config.window
    inside, _ = segment_windows(recordings, "test", window)
    f_in, l_in = embed(model, inside)
    s_in = scores(stats, f_in, l_in)
    out: dict = {"inside_windows": len(inside), "flagged_inside": float((s_in["mahalanobis"] > limit).mean())}
    for name, signals in cases.items():
        windows = [sliding_windows(x, window, window // 2) for x in signals]
        if not signals or not sum(len(w) for w in windows):
            continue
        x = np.concatenate(windows)
        f, logits = embed(model, x)
        s = scores(stats, f, logits)
        out[name] = {
            "windows": len(x),
            "auroc": {k: auroc(s_in[k], s[k]) for k in SCORES},
            "flagged": float((s["mahalanobis"] > limit).mean()),
            "called_normal": float((logits.argmax(1) == 0).mean()),
        }
    return out
