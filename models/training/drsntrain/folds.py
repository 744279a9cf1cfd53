"""The held-out folds summarised: per headline cell the accuracy, the healthy windows called faulty and the faulty
windows called healthy, each with the windows behind it and a 95% confidence interval; by fold and recipe.

Held-out windows overlap (see experiments.HELDOUT_HOP_DIVISOR) and seeds and noise realisations reuse the same
windows, so an interval counts the independent windows (the samples the windows span, over the window length), not
the windows scored. Every window of a recording comes from one bearing: the intervals say nothing about other
bearings, which this data does not have.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .data import CLASSES, independent_windows

HEADLINE: list[tuple[str, float | None]] = [
    ("clean", None),
    ("gaussian", -8.0),
    ("laplacian", -8.0),
    ("pink", -8.0),
    ("gaussian", -10.0),
]
HEALTHY = CLASSES.index("normal")
META_KEYS = ("labels", "recording", "load", "hop")


def cell_key(noise_type: str, snr: float | None) -> str:
    return noise_type if snr is None else f"{noise_type}{snr:g}"


def cell_name(noise_type: str, snr: float | None) -> str:
    return noise_type if snr is None else f"{noise_type} {snr:g} dB"


def fold_kind(train_loads: list[int], test_loads: list[int]) -> str:
    """'extrapolation' when a held-out load lies outside the loads trained on, else 'interpolation'."""
    outside = any(t < min(train_loads) or t > max(train_loads) for t in test_loads)
    return "extrapolation" if outside else "interpolation"


def wilson(p: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p observed on n (possibly fractional) independent trials."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load_heldout(runs_dir: Path, run: str) -> dict:
    with np.load(runs_dir / run / "heldout.npz") as z:
        return dict(z)


def independent(labels_mask: np.ndarray, recording: np.ndarray, window: int, hop: int) -> float:
    """Independent windows behind the windows selected by labels_mask."""
    return sum(
        independent_windows(int((recording[labels_mask] == r).sum()), window, hop)
        for r in np.unique(recording[labels_mask])
    )


def run_rates(heldout: dict, window: int) -> dict:
    """Per headline cell: accuracy, healthy windows called a fault, faulty windows called healthy; and the windows
    (scored and independent) behind each."""
    labels, recording, hop = heldout["labels"], heldout["recording"], int(heldout["hop"])
    healthy = labels == HEALTHY
    out = {
        "windows": len(labels),
        "independent": independent(np.ones_like(healthy), recording, window, hop),
        "healthy_windows": int(healthy.sum()),
        "healthy_independent": independent(healthy, recording, window, hop),
        "faulty_independent": independent(~healthy, recording, window, hop),
        "cells": {},
    }
    for noise_type, snr in HEADLINE:
        logits = heldout[cell_key(noise_type, snr)]
        reps = len(logits) // len(labels)
        y, pred = np.tile(labels, reps), logits.argmax(1)
        h = y == HEALTHY
        out["cells"][cell_key(noise_type, snr)] = {
            "accuracy": float((pred == y).mean()),
            "false_alarm": float((pred[h] != HEALTHY).mean()) if h.any() else None,
            "called_normal": float((pred[~h] == HEALTHY).mean()) if (~h).any() else None,
        }
    return out


def summarise(results: dict[str, dict], runs_dir: Path) -> dict:
    """By recipe ('study' or '2.0.0'), architecture and protocol: the seed-mean rates, the windows behind them and
    their intervals."""
    groups: dict[tuple, list[dict]] = {}
    for r in results.values():
        if not r.get("test_loads"):
            continue
        key = (r.get("recipe", "study"), r["arch"], r["protocol"])
        rates = run_rates(load_heldout(runs_dir, r["run"]), r["model"]["window"])
        groups.setdefault(key, []).append({**rates, "train_loads": r["train_loads"], "test_loads": r["test_loads"]})
    out: dict = {}
    for (recipe, arch, protocol), runs in sorted(groups.items()):
        first = runs[0]
        entry = {
            "kind": fold_kind(first["train_loads"], first["test_loads"]),
            "train_loads": first["train_loads"],
            "test_loads": first["test_loads"],
            "seeds": len(runs),
            **{k: first[k] for k in ("windows", "independent", "healthy_windows", "healthy_independent")},
            "faulty_independent": first["faulty_independent"],
            "cells": {},
        }
        for key in first["cells"]:
            cell = {}
            for rate, n in (
                ("accuracy", first["independent"]),
                ("false_alarm", first["healthy_independent"]),
                ("called_normal", first["faulty_independent"]),
            ):
                values = [run["cells"][key][rate] for run in runs if run["cells"][key][rate] is not None]
                if values:
                    mean = float(np.mean(values))
                    cell[rate] = {"mean": mean, "ci95": list(wilson(mean, n)), "seeds": values}
            entry["cells"][key] = cell
        out.setdefault(recipe, {}).setdefault(arch, {})[protocol] = entry
    return out


def kind_means(summary: dict, recipe: str, arch: str, kind: str) -> dict[str, float]:
    """Mean accuracy per headline cell over the folds of one kind (each fold weighted alike)."""
    folds = [f for f in summary.get(recipe, {}).get(arch, {}).values() if f["kind"] == kind]
    return {
        cell_key(t, s): float(np.mean([f["cells"][cell_key(t, s)]["accuracy"]["mean"] for f in folds]))
        for t, s in HEADLINE
        if folds
    }


def verdict(summary: dict, arch: str = "cw") -> dict:
    """Whether the study recipe beats model 2.0.0's on the extrapolation folds (at least four of the five headline
    cells and their mean) without losing the interpolation fold (its mean over cells no more than a point lower)."""
    new_x, old_x = (
        kind_means(summary, "study", arch, "extrapolation"),
        kind_means(summary, "2.0.0", arch, "extrapolation"),
    )
    new_i, old_i = (
        kind_means(summary, "study", arch, "interpolation"),
        kind_means(summary, "2.0.0", arch, "interpolation"),
    )
    if not (new_x and old_x and new_i and old_i):
        return {"decided": False, "why": "the 2.0.0 recipe's runs are missing"}
    cells_better = sum(new_x[k] >= old_x[k] for k in new_x)
    mean_x = (float(np.mean(list(new_x.values()))), float(np.mean(list(old_x.values()))))
    mean_i = (float(np.mean(list(new_i.values()))), float(np.mean(list(old_i.values()))))
    better = cells_better >= 4 and mean_x[0] >= mean_x[1] and mean_i[0] >= mean_i[1] - 0.01
    return {
        "decided": True,
        "ship": bool(better),
        "extrapolation_cells_better": cells_better,
        "extrapolation_mean": {"study": mean_x[0], "2.0.0": mean_x[1]},
        "interpolation_mean": {"study": mean_i[0], "2.0.0": mean_i[1]},
        "extrapolation": {"study": new_x, "2.0.0": old_x},
        "interpolation": {"study": new_i, "2.0.0": old_i},
    }
