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

# Targets on the leave-one-load-out folds (DRSN-CW, mean over folds and seeds).
TARGETS = [
    ("clean", None, 0.995),
    ("gaussian", -8.0, 0.93),
    ("laplacian", -8.0, 0.94),
    ("pink", -8.0, 0.97),
    ("gaussian", -10.0, 0.85),
]


def cell(result: dict, noise_type: str, snr: float | None) -> float:
    acc = result["test"]["accuracy"]
    return acc[CLEAN] if noise_type == CLEAN else acc[noise_type][f"{snr:g}"]


def aggregate(results: list[dict], noise_type: str, snr: float | None) -> tuple[float, float | None]:
    """Mean and sample standard deviation over seeds (None for a single seed)."""
    values = np.array([cell(r, noise_type, snr) for r in results])
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def by_arch(results: dict[str, dict], protocol: str) -> dict[str, list[dict]]:
    """Runs of a protocol by architecture; protocol "lolo" takes every leave-one-load-out fold."""
    out: dict[str, list[dict]] = {a: [] for a in ARCHS}
    for r in results.values():
        if r["protocol"] == protocol or (protocol == "lolo" and r["protocol"].startswith("lolo-")):
            out[r["arch"]].append(r)
    return out


def segment_view(groups: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The same runs, scored on the held-out load's test segments instead of every window."""
    return {a: [{**r, "test": r["test_segment"]} for r in rs if "test_segment" in r] for a, rs in groups.items()}


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
    """The difference in every noisy cell, and a one-line verdict."""
    lines = ["| noise | SNR (dB) | DRSN-CW | ResNet | difference (points) |", "|---|---|---|---|---|"]
    cells = [(CLEAN, None)] + [(t, s) for t in NOISE_TYPES for s in SNR_GRID_DB]
    ahead = 0
    for t, s in cells:
        cw, _ = aggregate(groups["cw"], t, s)
        rn, _ = aggregate(groups["none"], t, s)
        ahead += cw > rn
        lines.append(f"| {t} | {'-' if s is None else f'{s:g}'} | {pct(cw)} | {pct(rn)} | {100 * (cw - rn):+.2f} |")
    verdict = f"DRSN-CW is above ResNet in {ahead} of {len(cells)} cells (mean over folds and seeds)."
    return "\n".join(lines), verdict


def targets_table(groups: dict[str, list[dict]]) -> str:
    lines = ["| target | DRSN-CW mean ± std over folds and seeds | met |", "|---|---|---|"]
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
    axes[0].set_ylabel("held-out load accuracy (%), mean ± std")
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


def bench_table(bench: dict) -> str:
    names = {
        "recipe-cw": "DRSN-CW, shipped recipe",
        "recipe-none": "ResNet, shipped recipe",
        "recipe-cs": "DRSN-CS, shipped recipe",
        "shipped-1.1.0": "DRSN-CW 1.1.0 (previous shipped model)",
        "paper": "DRSN-CW, the paper's size",
    }
    base = bench.get("shipped-1.1.0", {}).get("windows_per_s")
    lines = [
        "| network | window | parameters | windows/s (batch 64, 1 thread) | x 1.1.0 | real-time sensors per thread |",
        "|---|---|---|---|---|---|",
    ]
    for key, b in bench.items():
        ratio = f"{b['windows_per_s'] / base:.1f}" if base else "-"
        # A window every window/2 samples at 12 kHz: real-time sensors one thread keeps up with.
        sensors = b["windows_per_s"] * (b["window"] / 2) / 12_000
        lines.append(
            f"| {names.get(key, key)} | {b['window']} | {b['parameters']:,} | {b['windows_per_s']:,.0f} | {ratio} | "
            f"{sensors:,.0f} |"
        )
    return "\n".join(lines)


def pilots_table(pilots: dict) -> str:
    if not pilots:
        return "No pilot summary (`python -m drsntrain pareto` writes `pilots.json`)."
    lines = [
        "| recipe | window | stem | channels x units | speed | train share | val | clean | Gaussian -8 | "
        "Laplacian -8 | pink -8 | Gaussian -10 | windows/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in pilots.items():
        st = p["settings"]
        lines.append(
            f"| {name} | {st['window']} | {st['stem_kernel']}/{st['stem_stride']} | "
            f"{4 * st['width']}-{8 * st['width']}-{16 * st['width']} x {st['units']} | {st['speed']:g} | "
            f"{st['train_fraction']:g} | {100 * p['val']:.1f} | {100 * p['clean']:.2f} | "
            f"{100 * p['gaussian-8']:.2f} | {100 * p['laplacian-8']:.2f} | {100 * p['pink-8']:.2f} | "
            f"{100 * p['gaussian-10']:.2f} | {p['windows_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def plot_pareto(pilots: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, p in pilots.items():
        ax.scatter(p["windows_per_s"], 100 * p["gaussian-8"], s=40)
        ax.annotate(
            name, (p["windows_per_s"], 100 * p["gaussian-8"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    ax.set_xlabel("ONNX Runtime windows/s (batch 64, one thread)")
    ax.set_ylabel("Gaussian -8 dB, held-out loads (%), one seed")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration_table(c: dict) -> str:
    lines = [
        "| held-out load | temperature (fitted on the other folds) | ECE before | ECE after | threshold | "
        "coverage | accuracy above | accuracy below |",
        "|---|---|---|---|---|---|---|---|",
    ]
    opt = lambda v: "-" if v is None else pct(v)  # noqa: E731
    for fold, f in c["per_fold"].items():
        lines.append(
            f"| {fold} hp | {f['temperature']:.3f} | {f['ece_before']:.4f} | {f['ece_after']:.4f} | "
            f"{f['threshold']:.3f} | {pct(f['coverage'])} | {opt(f['accuracy_above'])} | {opt(f['accuracy_below'])} |"
        )
    return "\n".join(lines)


def per_fold_table(groups: dict[str, list[dict]]) -> str:
    lines = [
        "| held-out load | clean | Gaussian -8 | Laplacian -8 | pink -8 | Gaussian -10 |",
        "|---|---|---|---|---|---|",
    ]
    for load in sorted({r["test_load"] for r in groups["cw"]}):
        rs = [r for r in groups["cw"] if r["test_load"] == load]
        row = [pct(*aggregate(rs, t, s)) for t, s, _ in TARGETS]
        lines.append(f"| {load} hp | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_report(
    out: Path,
    results: dict[str, dict],
    shipped: dict,
    card: dict,
    bench: dict,
    calibration: dict,
    pilots: dict,
    timing: dict,
    command: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lolo = by_arch(results, "lolo")
    mixed = by_arch(results, "mixed")
    plot_accuracy(lolo, out / "accuracy_vs_snr.png")
    plot_confusion(shipped, -8.0, out / "confusion_-8dB.png")
    plot_shrinkage(shipped["test"]["shrinkage"], out / "shrinkage_vs_snr.png")
    if pilots:
        plot_pareto(pilots, out / "pareto.png")
    comparison, verdict = cw_vs_resnet(lolo)
    paper_runs = any(r["protocol"].startswith("paper") for r in results.values())
    text = REPORT_TEMPLATE.format(
        name=card["name"],
        version=card["version"],
        onnx=card["onnx"],
        sha=card["sha256"],
        arch=card["architecture"]["type"],
        params=card["architecture"]["parameters"],
        shipped_seed=shipped["seed"],
        targets=targets_table(lolo),
        lolo_grid=grid_table(lolo),
        lolo_segment=grid_table(segment_view(lolo)),
        per_fold=per_fold_table(lolo),
        verdict=verdict,
        comparison=comparison,
        time_grid=grid_table(mixed),
        paper=(
            "## The paper's protocol\n\n" + paper_setup(results) + "\n\n" + paper_table(results) + "\n"
            if paper_runs
            else ""
        ),
        bench=bench_table(bench),
        pilots=pilots_table(pilots),
        calibration=calibration_table(calibration),
        cal=calibration,
        shrinkage=shrinkage_table(shipped["test"]["shrinkage"]),
        shrinkage_direction=shrinkage_direction(shipped["test"]["shrinkage"]),
        window=card["input"]["window"],
        repeats=shipped["test"]["repeats"],
        train_windows=shipped["train_windows_per_epoch"],
        recipe=shipped["train"],
        model=shipped["model"],
        noise=shipped["noise"],
        parity=card["parity"],
        conditions=card["operating_conditions"],
        wall_min=timing["run_seconds"] / 60 / timing["jobs"],
        finish_s=timing["finish_seconds"],
        cores=os.cpu_count(),
        ort_version=onnxruntime.__version__,
        run_min=timing["run_seconds"] / 60,
        jobs=timing["jobs"],
        command=command,
        runs=len(results),
        folds=len({r["test_load"] for r in lolo["cw"]}),
        seeds=len({r["seed"] for r in lolo["cw"]}),
    )
    (out / "README.md").write_text(text)
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in results.items()}
    (out / "results.json").write_text(
        json.dumps({"timing": timing, "bench": bench, "calibration": calibration, "runs": slim}, indent=1) + "\n"
    )


REPORT_TEMPLATE = """\
# DRSN on CWRU: on loads it never saw, under heavy noise

Shipped model: **{name} {version}** (`models/{onnx}`, sha256 `{sha}`), a {arch} with {params:,} parameters: seed
{shipped_seed} of the time-split runs below, trained on all three loads with the recipe the leave-one-load-out folds
chose (the DRSN-CW seed with the best validation accuracy; no test data played a part in any choice).

Reproduce from a fresh clone with `make reproduce` (it creates `.venv` and runs `{command}` in `models/training`;
see `models/training/README.md`). Its {runs} runs took {run_min:.0f} min of training and evaluation summed, {jobs} at
a time with one thread each: about {wall_min:.0f} min of wall time on a {cores}-core machine, plus
{finish_s:.0f} s for calibration, shipping and this report; an interrupted study resumes from the runs it
finished. `make study` also reruns every recipe of the table "What was tried" (about 3 hours).

## Targets: leave one load out (DRSN-CW, {folds} folds x {seeds} seeds)

{targets}

## The protocol

- Data: CWRU 12 kHz drive-end accelerometer at loads 0, 1 and 2 hp, 10 classes.
- **Leave one load out**: train on two loads, test on every window (back to back, {window} samples) of the third;
  three folds. The healthy recording exists at 0 hp only: it is split by time into three equal parts, part i
  standing in for load i, so each fold trains on two thirds and tests on the third it never saw (disjoint).
- Within the training loads each recording is split by time: 60% train, 20% validation (checkpoint and recipe
  choice), 20% unused. Model selection never sees the held-out load.
- Noise grid: Gaussian, Laplacian and pink (1/f) at 4 to -10 dB, rescaled per window to the exact SNR, {repeats}
  realisations per window and cell from a fixed seed per cell, the same for every model.
- Recipe ({model[shrinkage]} shown): window {model[window]}, stem kernel {model[stem_kernel]} stride
  {model[stem_stride]} with {model[stem_channels]} channels, stages {model[stages]} (channels, units), SGD momentum
  {recipe[momentum]}, lr {recipe[lr]} / 10 at {recipe[milestones]} of {recipe[epochs]} epochs, batch
  {recipe[batch_size]}, L2 {recipe[weight_decay]}; each training window resampled by a random factor within
  +-{recipe[speed_perturb]:g} (speed changes with load) and clean with probability {noise[clean_prob]}, else a random
  noise type at an SNR uniform in [{noise[snr_low]:g}, {noise[snr_high]:g}] dB; the checkpoint kept is the best on
  validation over the last 20% of epochs.

## Held-out loads, every window: accuracy (%), mean ± std over folds and seeds

Best per row in bold. Plot: `accuracy_vs_snr.png`.

{lolo_grid}

![accuracy against SNR](accuracy_vs_snr.png)

Per held-out load (DRSN-CW):

{per_fold}

Held-out loads, their test segments only (the last 20% of each recording of the held-out load):

{lolo_segment}

## DRSN-CW against ResNet, held-out loads (same recipe and seeds)

{verdict}

{comparison}

## Time split (second table): the shipped recipe trained on all loads, tested on their test segments

{time_grid}

## Cost (ONNX Runtime {ort_version}, CPU, measured one after another in one run)

{bench}

The last column: real-time 12 kHz sensors one thread keeps up with at the card's default hop (half a window).

## What was tried (leave one load out, one seed, DRSN-CW)

The recipe was chosen on validation accuracy (the training loads' validation segments, every noise cell), not on
the held-out loads; the held-out columns are reported for every recipe tried. `pareto.png` plots Gaussian -8 dB
against cost.

{pilots}

![accuracy against cost](pareto.png)

## Calibration: what the service may trust

Temperature scaling fitted on the held-out loads of the DRSN-CW fold models (every noise cell and clean windows,
{cal[windows]} windows). Expected calibration error (15 bins), cross-fitted (each fold's temperature fitted on the
other folds): before and after. The threshold is the lowest confidence at which held-out windows are
{cal[target_precision]:.0%} right; the service reports windows below it as uncertain.

{calibration}

Shipped: temperature {cal[temperature]:.3f}, uncertain below {cal[uncertain_below]:.3f} (coverage on held-out loads
{cal[coverage]:.1%}); ECE on all held-out windows {cal[ece_before]:.4f} before, {cal[ece_after]:.4f} after.

Operating conditions trained on (in the card): loads {conditions[loads_hp]} hp, shaft speeds {conditions[speed_rpm]}
rpm, {conditions[sample_rate_hz]} Hz.

{paper}
## Confusion at -8 dB (shipped model, time split)

![confusion matrix at -8 dB](confusion_-8dB.png)

## Noise score: the `shrinkage` output

The mean over units of each residual shrinkage unit's threshold ratio alpha is the noise score the service
returns. Spearman rank correlation between the injected SNR and the score (shipped model, test segments):

{shrinkage}

{shrinkage_direction}

![shrinkage against SNR](shrinkage_vs_snr.png)

## Export checks

ONNX opset 17, IR version <= 10, dynamic batch axis. On all test windows, at batch sizes 1, 7 and all:
max |ONNX - PyTorch| = {parity[max_abs_diff]:.2e}, same argmax: {parity[argmax_equal]}.
"""
