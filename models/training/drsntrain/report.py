"""The study report: aggregate the runs, write the markdown tables and the PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime

from .data import CLASSES
from .evaluate import CLEAN, SNR_GRID_DB
from .experiments import ARCHS, PAPER_SNRS_DB
from .model import ARCH_NAMES
from .noise import NOISE_TYPES
from .train import TrainConfig

# Targets of the issue, on the test segments (DRSN-CW, mean over seeds).
TARGETS = [("clean", None, 0.995)] + [(t, -8.0, 0.95) for t in NOISE_TYPES] + [("gaussian", -10.0, 0.85)]


def cell(result: dict, noise_type: str, snr: float | None) -> float:
    acc = result["test"]["accuracy"]
    return acc[CLEAN] if noise_type == CLEAN else acc[noise_type][f"{snr:g}"]


def aggregate(results: list[dict], noise_type: str, snr: float | None) -> tuple[float, float | None]:
    """Mean and sample standard deviation over seeds (None for a single seed)."""
    values = np.array([cell(r, noise_type, snr) for r in results])
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def by_arch(results: dict[str, dict], protocol: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {a: [] for a in ARCHS}
    for r in results.values():
        if r["protocol"] == protocol:
            out[r["arch"]].append(r)
    return out


def pct(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def grid_table(groups: dict[str, list[dict]]) -> str:
    """Accuracy per cell (rows) and architecture (columns), mean ± std over seeds."""
    archs = [a for a in ARCHS if groups[a]]
    lines = [
        "| noise | SNR (dB) | " + " | ".join(f"{ARCH_NAMES[a]} (n={len(groups[a])})" for a in archs) + " |",
        "|---|---|" + "---|" * len(archs),
    ]
    cells = [(CLEAN, None)] + [(t, s) for t in NOISE_TYPES for s in SNR_GRID_DB]
    for t, s in cells:
        values = [aggregate(groups[a], t, s) for a in archs]
        best = max(m for m, _ in values)
        shown = [(f"**{pct(m, sd)}**" if m == best else pct(m, sd)) for m, sd in values]
        lines.append(f"| {t} | {'-' if s is None else f'{s:g}'} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def cw_vs_resnet(groups: dict[str, list[dict]]) -> tuple[str, str]:
    """The difference table and a one-line verdict on the cells at -6 dB and below."""
    lines = ["| noise | SNR (dB) | DRSN-CW | ResNet | difference (points) |", "|---|---|---|---|---|"]
    behind = []
    cells = [(t, s) for t in NOISE_TYPES for s in SNR_GRID_DB if s <= -6]
    for t, s in cells:
        cw, _ = aggregate(groups["cw"], t, s)
        rn, _ = aggregate(groups["none"], t, s)
        if cw <= rn:
            behind.append(f"{t} {s:g} dB ({100 * (cw - rn):+.2f})")
        lines.append(f"| {t} | {s:g} | {pct(cw)} | {pct(rn)} | {100 * (cw - rn):+.2f} |")
    if not behind:
        verdict = f"DRSN-CW is above ResNet in all {len(cells)} cells at -6 dB and below, averaged over seeds."
    else:
        verdict = (
            f"DRSN-CW is above ResNet in {len(cells) - len(behind)} of {len(cells)} cells at -6 dB and below, "
            f"averaged over seeds, but **not** in: {', '.join(behind)}."
        )
    return "\n".join(lines), verdict


def targets_table(groups: dict[str, list[dict]]) -> str:
    lines = ["| target | DRSN-CW mean ± std | met |", "|---|---|---|"]
    for t, s, goal in TARGETS:
        m, sd = aggregate(groups["cw"], t, s)
        name = "clean" if t == CLEAN else f"{t} {s:g} dB"
        lines.append(f"| {name} >= {100 * goal:g}% | {pct(m, sd)} | {'yes' if m >= goal else '**no**'} |")
    return "\n".join(lines)


def paper_table(results: dict[str, dict]) -> str:
    """Accuracy at the training SNR, and on clean windows (which these models never saw)."""
    archs = " | ".join(ARCH_NAMES[a] for a in ARCHS)
    lines = [f"| train = test SNR (Gaussian) | {archs} | clean accuracy of the same models |"]
    lines.append("|---" * (len(ARCHS) + 2) + "|")
    for snr in PAPER_SNRS_DB:
        groups = by_arch(results, f"paper-gaussian{snr:g}dB")
        row, clean = [], []
        for a in ARCHS:
            if groups[a]:
                m, sd = aggregate(groups[a], "gaussian", snr)
                row.append(f"{pct(m, sd)} (n={len(groups[a])})")
                clean.append(f"{ARCH_NAMES[a]} {pct(*aggregate(groups[a], CLEAN, None))}")
            else:
                row.append("-")
        lines.append(f"| {snr:g} dB | " + " | ".join(row) + " | " + "; ".join(clean) + " |")
    return "\n".join(lines)


def batch_note(batch_size: int) -> str:
    if batch_size == TrainConfig.batch_size:
        return " (the paper's)"
    return f" (the paper's is {TrainConfig.batch_size}: why, in `models/training/README.md`)"


def paper_setup(results: dict[str, dict]) -> str:
    runs = [r for r in results.values() if r["protocol"].startswith("paper")]
    if not runs:
        return "No runs."
    m, t = runs[0]["model"], runs[0]["train"]
    widths = "-".join(str(c) for c, _ in m["stages"])
    size = "the paper's size" if widths == "4-8-16" else "not the paper's size"
    return (
        f"Network: {widths} channels, {m['stages'][0][1]} units per stage ({size}), "
        f"{t['epochs']} epochs, batch {t['batch_size']}{batch_note(t['batch_size'])}, the same recipe otherwise."
    )


def plot_accuracy(groups: dict[str, list[dict]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(NOISE_TYPES), figsize=(15, 4.2), sharey=True)
    snrs = list(SNR_GRID_DB)
    for ax, t in zip(axes, NOISE_TYPES, strict=True):
        for arch in ARCHS:
            if not groups[arch]:
                continue
            stats = np.array([[m, sd or 0.0] for m, sd in (aggregate(groups[arch], t, s) for s in snrs)])
            ax.errorbar(snrs, 100 * stats[:, 0], yerr=100 * stats[:, 1], marker="o", capsize=3, label=ARCH_NAMES[arch])
        ax.set_title(f"{t} noise")
        ax.set_xlabel("SNR (dB)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), mean ± std over seeds")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(result: dict, snr: float, path: Path) -> None:
    fig, axes = plt.subplots(1, len(NOISE_TYPES), figsize=(18, 5.8))
    for ax, t in zip(axes, NOISE_TYPES, strict=True):
        m = np.array(result["test"]["confusion"][t], dtype=float)
        m = m / m.sum(1, keepdims=True).clip(min=1)
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(CLASSES)):
            for j in range(len(CLASSES)):
                if m[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{100 * m[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[i, j] > 0.5 else "black",
                    )
        ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=90, fontsize=7)
        ax.set_yticks(range(len(CLASSES)), CLASSES, fontsize=7)
        ax.set_title(f"{t}, {snr:g} dB (row %)")
        ax.set_xlabel("predicted")
    axes[0].set_ylabel("true")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_shrinkage(summary: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    clean = np.mean(summary["clean"])
    for t in NOISE_TYPES:
        per_snr = summary["types"][t]["mean_alpha_by_snr"]
        snrs = sorted(float(s) for s in per_snr)
        axes[0].plot(snrs, [np.mean(per_snr[f"{s:g}"]) for s in snrs], marker="o", label=t)
    axes[0].axhline(clean, color="gray", ls="--", label="clean")
    axes[0].set_xlabel("injected SNR (dB)")
    axes[0].set_ylabel("noise score: mean alpha over units")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    units = len(summary["clean"])
    width = 0.8 / len(NOISE_TYPES)
    for i, t in enumerate(NOISE_TYPES):
        rho = summary["types"][t]["spearman_per_unit"]
        axes[1].bar(np.arange(units) + i * width, rho, width, label=t)
    axes[1].set_xticks(np.arange(units) + width * (len(NOISE_TYPES) - 1) / 2, [str(u) for u in range(units)])
    axes[1].set_xlabel("unit (input side first)")
    axes[1].set_ylabel("Spearman rho (alpha vs SNR)")
    axes[1].axhline(0, color="black", lw=0.5)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shrinkage_table(summary: dict) -> str:
    lines = ["| noise | Spearman rho, score vs SNR | strongest unit (rho) |", "|---|---|---|"]
    for t in NOISE_TYPES:
        s = summary["types"][t]
        per_unit = np.array(s["spearman_per_unit"])
        u = int(np.argmax(np.abs(per_unit)))
        lines.append(f"| {t} | {s['spearman_mean_of_units']:+.3f} | unit {u} ({per_unit[u]:+.3f}) |")
    return "\n".join(lines)


def shrinkage_direction(summary: dict) -> str:
    rhos = {t: summary["types"][t]["spearman_mean_of_units"] for t in NOISE_TYPES}
    if all(r > 0 for r in rhos.values()):
        return (
            "The correlation is positive for every noise type: the mean alpha *falls* as the noise rises, so a low "
            "score means a noisy window. A plausible reading, not tested here: tau is alpha times the mean feature "
            "magnitude, which noise inflates, so a smaller fraction of it already removes the noise."
        )
    if all(r < 0 for r in rhos.values()):
        return "The correlation is negative for every noise type: the mean alpha rises with the noise."
    return "The sign of the correlation differs between noise types, so the score is no reliable noise gauge alone."


def bench_table(bench: dict, params: dict[str, int]) -> str:
    lines = [
        "| architecture | parameters | windows/s (batch 64, 1 thread) | ms per batch |",
        "|---|---|---|---|",
    ]
    for arch in ARCHS:
        b = bench[arch]
        lines.append(f"| {ARCH_NAMES[arch]} | {params[arch]:,} | {b['windows_per_s']:,.0f} | {b['ms_per_batch']:.2f} |")
    return "\n".join(lines)


def write_report(
    out: Path,
    results: dict[str, dict],
    shipped: dict,
    card: dict,
    bench: dict,
    params: dict[str, int],
    timing: dict,
    command: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    groups = by_arch(results, "mixed")
    plot_accuracy(groups, out / "accuracy_vs_snr.png")
    plot_confusion(shipped, -8.0, out / "confusion_-8dB.png")
    plot_shrinkage(shipped["test"]["shrinkage"], out / "shrinkage_vs_snr.png")
    comparison, verdict = cw_vs_resnet(groups)
    text = REPORT_TEMPLATE.format(
        name=card["name"],
        version=card["version"],
        onnx=card["onnx"],
        sha=card["sha256"],
        arch=card["architecture"]["type"],
        params=card["architecture"]["parameters"],
        shipped_seed=shipped["seed"],
        targets=targets_table(groups),
        grid=grid_table(groups),
        verdict=verdict,
        comparison=comparison,
        paper=paper_table(results),
        paper_setup=paper_setup(results),
        bench=bench_table(bench, params),
        shrinkage=shrinkage_table(shipped["test"]["shrinkage"]),
        shrinkage_direction=shrinkage_direction(shipped["test"]["shrinkage"]),
        windows=shipped["test"]["windows"],
        window=card["input"]["window"],
        repeats=shipped["test"]["repeats"],
        train_windows=shipped["train_windows_per_epoch"],
        recipe=shipped["train"],
        batch_note=batch_note(shipped["train"]["batch_size"]),
        noise=shipped["noise"],
        parity=card["parity"],
        wall_min=timing["wall_seconds"] / 60,
        cores=os.cpu_count(),
        ort_version=onnxruntime.__version__,
        run_min=timing["run_seconds"] / 60,
        jobs=timing["jobs"],
        command=command,
        runs=len(results),
    )
    (out / "README.md").write_text(text)
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in results.items()}
    (out / "results.json").write_text(json.dumps({"timing": timing, "bench": bench, "runs": slim}, indent=1) + "\n")


REPORT_TEMPLATE = """\
# DRSN on CWRU under heavy noise: study report

Shipped model: **{name} {version}** (`models/{onnx}`, sha256 `{sha}`), a {arch} with {params:,} parameters,
seed {shipped_seed} of the study below (the DRSN-CW seed with the best validation accuracy; the test segments
played no part in the choice).

Reproduce from a fresh clone with `make reproduce` (it creates `.venv` and runs `{command}` in
`models/training`; see `models/training/README.md`).

It took {wall_min:.0f} min of wall time on a {cores}-core machine ({run_min:.0f} min of training and
evaluation summed over {runs} runs, {jobs} runs at a time, one thread each).

## Targets (test segments, mean over seeds)

{targets}

## Protocol

- Data: CWRU 12 kHz drive-end accelerometer, loads 0-2 hp, 10 classes (the healthy baseline exists at 0 hp only).
- Split: each recording by time, first 60% train, next 20% validation, last 20% test. No window straddles two
  segments. Training windows are drawn at random offsets inside the train segment each epoch (they overlap;
  {train_windows} per epoch); validation and test windows are back to back and never overlap.
- Test set: {windows} windows of {window} samples. Every noisy cell uses {repeats} noise realisations per window
  from a fixed seed per cell, identical for every architecture and seed.
- Noise: Gaussian, Laplacian and pink (1/f power spectrum), rescaled per window so that its SNR is exactly the
  asked one (SNR = 10 log10 of the mean-square ratio over the window).
- One model for every noise level: each training window is clean with probability {noise[clean_prob]}, else it gets a
  random noise type at an SNR uniform in [{noise[snr_low]:g}, {noise[snr_high]:g}] dB, drawn afresh every epoch.
- Recipe (identical for every architecture): SGD momentum {recipe[momentum]}, lr {recipe[lr]} divided by 10 at
  {recipe[milestones]} of {recipe[epochs]} epochs, batch {recipe[batch_size]}{batch_note},
  L2 {recipe[weight_decay]}, He init; the checkpoint kept is the best on validation (all noise types at -10, -6,
  0 dB and clean) over the last 20% of epochs.

## Accuracy (%), mean ± std over seeds

Best per row in bold. Plot: `accuracy_vs_snr.png`.

{grid}

![accuracy against SNR](accuracy_vs_snr.png)

## DRSN-CW against ResNet at -6 dB and below

{verdict}

{comparison}

## The paper's protocol: train and test at one fixed Gaussian SNR

{paper_setup} Each model sees Gaussian noise at one SNR only, in training and test. The last column
tests the same models on clean windows, which they never saw: the reason the shipped model is trained on a mix.

{paper}

## Confusion at -8 dB (shipped model)

![confusion matrix at -8 dB](confusion_-8dB.png)

## Noise score: the `shrinkage` output

The ONNX model has a second output, `shrinkage` (N x units): the mean soft-threshold ratio alpha of each
residual shrinkage unit for each window. Its mean over units is the noise score the service returns. Spearman rank
correlation between the injected SNR and the score, over all test windows and SNRs of the grid (shipped model):

{shrinkage}

{shrinkage_direction}

![shrinkage against SNR](shrinkage_vs_snr.png)

## CPU inference cost (ONNX Runtime {ort_version}, CPU provider)

Seed-0 model of each architecture, batch 64 of real test windows, one intra-op thread:

{bench}

## Export checks

ONNX opset 17, IR version <= 10, dynamic batch axis. On all test windows, at batch sizes 1, 7 and all:
max |ONNX - PyTorch| = {parity[max_abs_diff]:.2e}, same argmax: {parity[argmax_equal]}.
"""
