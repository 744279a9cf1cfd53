"""Train on a plant's own recordings (a CSV manifest, see manifest.py) and write a model-repository version that
drsn-serve serves: `DIR/<name>/<version>/` with the ONNX file, its model card, a golden file and report.md.

The protocol is CWRU's with the manifest's `group` column in place of the motor load: leave one group out (train on
the other groups, test on every window of the held-out one, windows every half window), and the time split (60/20/20
of every recording) for the model shipped, the seed with the best validation accuracy. Every model is judged clean
and at a small noise grid; the softmax temperature and `uncertain_below` are fitted on the held-out groups' logits
(calibrate.calibrate, cross-fitted by group for its report) and the out-of-distribution score (ood.py) is fitted on
the shipped model's training windows and judged on every fold. Training, evaluation, calibration, the OOD score,
the ONNX export, the input range and the golden file are the shipped model's code.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import ood as ood_score
from .calibrate import calibrate
from .data import SPLIT, all_windows, split_windows
from .evaluate import evaluate_grid
from .export import load_checkpoint, save_checkpoint, sha256, write_card, write_golden
from .folds import cell_key, independent, wilson
from .manifest import (
    Manifest,
    ManifestError,
    PlantRecording,
    check_protocol,
    leave_one_group_out,
    load_signals,
    read_manifest,
)
from .model import DRSN, ModelConfig
from .ship import export_checked, golden_windows, input_range, serving_card
from .train import NoiseProtocol, TrainConfig, train

# Held-out windows every half window, as for CWRU's held-out loads.
HOP_DIVISOR = 2
MAX_NAME = 64  # src/model/repository.rs: names go into metric labels, topics and URLs


@dataclass(frozen=True)
class Options:
    """The recipe (defaults: the shipped model's) and what to write."""

    window: int | None = None  # default: 8192, or the --init-from checkpoint's
    rate_hz: float | None = None  # default: the manifest's rate when every recording has the same one
    epochs: int = 60
    seeds: int = 1
    init_from: Path | None = None
    unit: str = "g"
    sensor: str | None = None
    # Architecture (None: the shipped recipe's, or the checkpoint's with init_from).
    width: int | None = None
    units: int | None = None
    stages: int | None = None
    stem_kernel: int | None = None
    stem_stride: int | None = None
    speed: float = 0.04
    hop: int = 512
    batch: int = 64
    lr: float | None = None  # default 0.1, 0.01 when fine-tuning
    threads: int = 2
    folds: bool = True
    with_ood: bool = True
    snrs_db: tuple[float, ...] = (-4.0, -8.0)  # Gaussian noise cells of the study (besides clean)
    repeats: int = 2  # noise realisations per cell and window
    runs_dir: Path | None = None  # keeps every run (checkpoint, result) and resumes; default: a temporary folder
    golden_windows: int | None = None  # at most this many windows in the golden file; default: 3 per class
    overwrite: bool = False
    command: str | None = None


RECIPE = {"window": 8192, "width": 4, "units": 2, "stages": 3, "stem_kernel": 64, "stem_stride": 32}


def valid_name(name: str) -> bool:
    """What the server accepts as a model or version folder (src/model/repository.rs)."""
    return (
        0 < len(name) <= MAX_NAME
        and not name.startswith(".")
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    )


def requested_config(options: Options, classes: int, base: ModelConfig | None) -> ModelConfig:
    """The network asked for: the shipped recipe's (or `base`, a checkpoint's) with the options given."""
    if base is None:
        settings = {k: getattr(options, k) if getattr(options, k) is not None else v for k, v in RECIPE.items()}
        width, stages = settings["width"], settings["stages"]
        return ModelConfig(
            shrinkage="cw",
            classes=classes,
            window=settings["window"],
            stem_channels=4 * width,
            stem_kernel=settings["stem_kernel"],
            stem_stride=settings["stem_stride"],
            stages=tuple((4 * width * 2**i, settings["units"]) for i in range(stages)),
        )
    cfg = replace(base, classes=classes, window=options.window or base.window)
    if options.stem_kernel is not None:
        cfg = replace(cfg, stem_kernel=options.stem_kernel)
    if options.stem_stride is not None:
        cfg = replace(cfg, stem_stride=options.stem_stride)
    if options.width is not None or options.units is not None or options.stages is not None:
        width = options.width if options.width is not None else cfg.stem_channels // 4
        units = options.units if options.units is not None else cfg.stages[0][1]
        stages = options.stages if options.stages is not None else len(cfg.stages)
        cfg = replace(cfg, stem_channels=4 * width, stages=tuple((4 * width * 2**i, units) for i in range(stages)))
    return cfg


def fine_tune_start(
    checkpoint: Path, classes: int, options: Options
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(network, weights to start from, what the card says of it) for fine-tuning from a drsntrain checkpoint: every
    layer must match the network asked for except the final classifier (`fc`), which is re-initialised when the
    class count differs and kept when it is the same."""
    checkpoint = Path(checkpoint)
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        base = ModelConfig.from_dict(ckpt["config"])
        state = ckpt["state"]
    except Exception as e:  # a file that is not a drsntrain checkpoint fails in many ways
        raise ManifestError(f"--init-from {checkpoint}: not a drsntrain checkpoint ({e})") from None
    cfg = requested_config(options, classes, base)
    fresh = DRSN(cfg).state_dict()
    start, mismatched = {}, []
    for key, value in state.items():
        if key not in fresh:
            mismatched.append(f"{key} (not in the network asked for)")
        elif value.shape == fresh[key].shape:
            start[key] = value
        elif not key.startswith("fc."):
            mismatched.append(f"{key} {tuple(value.shape)} != {tuple(fresh[key].shape)}")
    mismatched += [f"{k} (not in the checkpoint)" for k in fresh if k not in state and not k.startswith("fc.")]
    if mismatched:
        raise ManifestError(
            f"--init-from {checkpoint}: its architecture differs from the network asked for beyond the final "
            f"classifier: {'; '.join(mismatched[:4])}{' ...' if len(mismatched) > 4 else ''}"
        )
    reinit = any(k.startswith("fc.") and k not in start for k in fresh)
    info = {
        "checkpoint": checkpoint.name,
        "sha256": sha256(checkpoint),
        "classifier": (
            f"re-initialised ({base.classes} -> {classes} classes)" if reinit else f"kept ({classes} classes)"
        ),
        "window": {"checkpoint": base.window, "trained": cfg.window},
    }
    return cfg, start, info


def model_rate(manifest: Manifest, options: Options) -> float:
    if options.rate_hz is not None:
        return int(options.rate_hz) if float(options.rate_hz).is_integer() else options.rate_hz
    rates = manifest.rates()
    if len(rates) > 1:
        raise ManifestError(
            f"{manifest.path}: recordings at {', '.join(f'{r:g}' for r in rates)} Hz: choose the model's rate (--rate)"
        )
    return rates[0]


def _flat(accuracy: dict) -> dict[str, float]:
    """evaluate_grid's {"clean": a, "gaussian": {"-4": a}} as {"clean": a, "gaussian-4": a}."""
    out = {}
    for key, value in accuracy.items():
        if isinstance(value, dict):
            out.update({cell_key(key, float(snr)): v for snr, v in value.items()})
        else:
            out[key] = value
    return out


class Runs:
    """Trains one run (a fold or the time split, one seed) and keeps its model and results; with a runs folder, a
    run stored with the same settings is read back instead of trained again."""

    def __init__(self, root: Path, cfg: ModelConfig, recipe: TrainConfig, start: dict | None, fixed: dict):
        self.root, self.cfg, self.recipe, self.start, self.fixed = root, cfg, recipe, start, fixed
        self.cells = [("gaussian", s) for s in fixed["snrs_db"]]

    def run(self, name: str, seed: int, train_recs, test: tuple[np.ndarray, np.ndarray], keep_logits: bool):
        folder = self.root / name / f"s{seed}"
        recipe = replace(self.recipe, seed=seed)
        settings = json.loads(
            json.dumps(
                {
                    "model": self.cfg.to_dict(),
                    "train": recipe.to_dict(),
                    "noise": asdict(NoiseProtocol()),
                    "recordings": sorted(r.row.name + f"#{r.row.channel}" for r in train_recs),
                    **self.fixed,
                }
            )
        )
        stored = folder / "result.json"
        if stored.exists():
            result = json.loads(stored.read_text())
            if result.get("settings") == settings:
                logits = dict(np.load(folder / "heldout.npz")) if keep_logits else None
                return load_checkpoint(folder / "model.pt"), result, logits
        progress = f"{name} s{seed}" if sys.stderr.isatty() else None
        model, log = train(train_recs, self.cfg, recipe, NoiseProtocol(), progress=progress, initial_state=self.start)
        logits: dict | None = {} if keep_logits else None
        x, y = test
        grid = evaluate_grid(model, x, y, repeats=self.fixed["repeats"], cells=self.cells, logits_out=logits)
        result = {"run": f"{name}/s{seed}", "seed": seed, "settings": settings, **log, "test": grid}
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, folder / "model.pt")
        if logits is not None:
            np.savez_compressed(folder / "heldout.npz", **logits)
        stored.write_text(json.dumps(result, indent=1))
        print(
            f"{name} seed {seed}: validation {log['best_val_acc']:.3f}, test clean {grid['accuracy']['clean']:.3f}",
            file=sys.stderr,
        )
        return model, result, logits


def fold_summary(group: str, groups: list[str], results: list[dict], held, window: int) -> dict:
    """One held-out group over its seeds: accuracy per cell (mean, seeds, 95% interval over independent windows)."""
    hop = window // HOP_DIVISOR
    _, y, src = all_windows(held, window, hop)
    n_independent = independent(np.ones(len(y), dtype=bool), src, window, hop)
    cells = {}
    for key in _flat(results[0]["test"]["accuracy"]):
        values = [_flat(r["test"]["accuracy"])[key] for r in results]
        mean = float(np.mean(values))
        cells[key] = {
            "mean": round(mean, 4),
            "ci95": [round(v, 4) for v in wilson(mean, n_independent)],
            "seeds": [round(v, 4) for v in values],
        }
    return {
        "train_groups": [g for g in groups if g != group],
        "test_group": group,
        "seeds": len(results),
        "windows": len(y),
        "independent_windows": round(n_independent, 1),
        "accuracy": cells,
    }


def card_calibration(fitted: dict) -> dict:
    return {
        "temperature": round(fitted["temperature"], 4),
        "uncertain_below": round(fitted["uncertain_below"], 4),
        "method": (
            "temperature scaling fitted on the held-out groups' windows of the leave-one-group-out folds (clean and "
            "every noise cell); uncertain_below: the lowest confidence at which those windows are "
            f"{100 * fitted['target_precision']:g}% right; per group: cross-fitted on the other groups"
        ),
        "ece_before": round(fitted["ece_before"], 4),
        "ece_after": round(fitted["ece_after"], 4),
        "coverage": round(fitted["coverage"], 4),
        "windows": fitted["windows"],
        "per_held_out_group": {
            g: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()}
            for g, f in fitted["per_fold"].items()
        },
    }


def card_ood(limit: float, judged: dict[str, list[dict]]) -> dict:
    aurocs = [j["cells"]["clean"]["auroc"]["mahalanobis"] for js in judged.values() for j in js]
    flagged = [j["cells"]["clean"]["flagged_outside"] for js in judged.values() for j in js]
    return {
        "output": "ood_score",
        "uncertain_above": round(limit, 3),
        "method": (
            "squared Mahalanobis distance of the pooled features to the nearest class mean (one covariance shared by "
            "the classes), fitted on the training windows clean and with the training noise; the threshold lets "
            f"{100 * ood_score.IN_RANGE_QUANTILE:g}% of the validation windows (training noise) through"
        ),
        "auroc_held_out_group_clean": (
            {"mean": round(float(np.mean(aurocs)), 3), "folds": len(aurocs)} if aurocs else None
        ),
        "flagged_held_out_group_clean": round(float(np.mean(flagged)), 3) if flagged else None,
        "report": "report.md",
    }


def operating_conditions(manifest: Manifest, rate_hz: float, sensor: str | None) -> dict:
    channels = sorted({r.channel for r in manifest.rows if r.channel is not None})
    return {
        "groups": list(manifest.groups),
        "recordings_per_group": {g: sum(r.group == g for r in manifest.rows) for g in manifest.groups},
        "sample_rate_hz": rate_hz,
        "recorded_at_hz": manifest.rates(),
        "sensor": sensor or "the sensor of the manifest's recordings",
        "channels": channels or None,
        "note": "windows from other machines, conditions or sensor positions than these groups are outside what was "
        "tested",
    }


def write_report(path: Path, card: dict, folds: dict | None, manifest: Manifest, command: str | None) -> None:
    ev, cal = card["evaluation"], card.get("calibration")
    cells = list(_flat(ev["accuracy"]))
    lines = [
        f"# {card['name']} {card['version']}",
        "",
        f"Trained on `{manifest.path.name}` (sha256 `{manifest.sha256[:12]}`): {len(manifest.rows)} recordings, "
        f"classes {', '.join(card['classes'])}, groups {', '.join(manifest.groups)}; windows of "
        f"{card['input']['window']} samples at {card['input']['sample_rate_hz']:g} Hz.",
        "",
    ]
    if command:
        lines += ["```", command, "```", ""]
    if folds:
        lines += [
            "## Leave one group out",
            "",
            "Trained on the other groups, tested on every window of the held-out group (windows every half window; "
            "the 95% intervals count independent windows). Mean over seeds.",
            "",
            "| held out | trained on | windows | " + " | ".join(cells) + " |",
            "|---|---|---|" + "---|" * len(cells),
        ]
        for group, f in folds.items():
            acc = " | ".join(
                f"{f['accuracy'][c]['mean']:.3f} [{f['accuracy'][c]['ci95'][0]:.3f}, {f['accuracy'][c]['ci95'][1]:.3f}]"
                for c in cells
            )
            lines.append(f"| {group} | {', '.join(f['train_groups'])} | {f['windows']} | {acc} |")
        lines.append("")
    acc = _flat(ev["accuracy"])
    lines += [
        "## The shipped model: time split",
        "",
        f"Trained on the first 60% of every recording, chosen on the next 20%, tested on the last 20% "
        f"({ev['windows']} windows, {ev['noise_realisations_per_cell']} noise realisations per noisy cell).",
        "",
        "| " + " | ".join(cells) + " |",
        "|" + "---|" * len(cells),
        "| " + " | ".join(f"{acc[c]:.3f}" for c in cells) + " |",
        "",
        "## Calibration",
        "",
    ]
    if cal:
        lines += [
            f"Temperature {cal['temperature']:g}, uncertain below {cal['uncertain_below']:g}: {cal['method']}. "
            f"ECE {cal['ece_before']:.4f} before scaling, {cal['ece_after']:.4f} after; "
            f"{100 * cal['coverage']:.1f}% of the held-out windows at or above the threshold.",
            "",
            "| held out | temperature | ECE before | ECE after | threshold | coverage | accuracy above |",
            "|---|---|---|---|---|---|---|",
        ]
        for g, f in cal["per_held_out_group"].items():
            above = "-" if f["accuracy_above"] is None else f"{f['accuracy_above']:.3f}"
            lines.append(
                f"| {g} | {f['temperature']:.3f} | {f['ece_before']:.4f} | {f['ece_after']:.4f} | "
                f"{f['threshold']:.4f} | {f['coverage']:.3f} | {above} |"
            )
    else:
        lines.append("None: without held-out groups there is nothing to fit it on (the card has no calibration).")
    lines.append("")
    if card.get("ood"):
        o = card["ood"]
        auroc = o["auroc_held_out_group_clean"]
        lines += [
            "## Out of distribution",
            "",
            f"`ood_score` above {o['uncertain_above']:g} is reported uncertain: {o['method']}."
            + (
                f" Held-out groups against the training groups' test windows, clean: AUROC {auroc['mean']:.3f} "
                f"(mean of {auroc['folds']} fold models), {100 * o['flagged_held_out_group_clean']:.1f}% flagged."
                if auroc
                else ""
            ),
            "",
        ]
    path.write_text("\n".join(lines))


def build(manifest_path: str | Path, repository: str | Path, name: str, version: str, options: Options) -> Path:
    """Train, evaluate, calibrate and export; returns the version folder written."""
    for what, value in (("name", name), ("version", version)):
        if not valid_name(value):
            raise ManifestError(f"--{what} {value!r}: 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -, not starting with '.'")
    counts = [("epochs", options.epochs), ("seeds", options.seeds), ("repeats", options.repeats)]
    if options.golden_windows is not None:
        counts.append(("golden-windows", options.golden_windows))
    for what, value in counts:
        if value < 1:
            raise ManifestError(f"--{what} {value}: at least 1")
    target = Path(repository) / name / version
    if target.exists() and not options.overwrite:
        raise ManifestError(f"{target} exists: choose another --version, or pass --overwrite")
    manifest = read_manifest(manifest_path)
    check_protocol(manifest, options.folds)
    classes = len(manifest.classes)
    if options.init_from is not None:
        cfg, start, init_info = fine_tune_start(options.init_from, classes, options)
    else:
        cfg, start, init_info = requested_config(options, classes, None), None, None
    rate = model_rate(manifest, options)
    recordings = load_signals(manifest, rate, cfg.window)
    recipe = TrainConfig(
        epochs=options.epochs,
        batch_size=options.batch,
        lr=options.lr if options.lr is not None else (0.01 if start is not None else 0.1),
        train_hop=options.hop,
        speed_perturb=options.speed,
        threads=options.threads,
    )
    torch.set_num_threads(options.threads)
    fixed = {
        "manifest_sha256": manifest.sha256,
        "rate_hz": rate,
        "init_from": init_info["sha256"] if init_info else None,
        "snrs_db": list(options.snrs_db),
        "repeats": options.repeats,
    }
    with tempfile.TemporaryDirectory() as scratch:
        runs = Runs(Path(options.runs_dir or scratch), cfg, recipe, start, fixed)
        hop = cfg.window // HOP_DIVISOR
        folds, held_logits, judged = {}, {}, {}
        for group in manifest.groups if options.folds else ():
            train_recs, held = leave_one_group_out(recordings, group)
            x, y, _ = all_windows(held, cfg.window, hop)
            results = []
            for seed in range(options.seeds):
                fold = "without-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in group)
                model, result, logits = runs.run(fold, seed, train_recs, (x, y), keep_logits=True)
                results.append(result)
                held_logits.setdefault(group, []).append(logits)
                if options.with_ood and cfg.shrinkage != "none":
                    judged.setdefault(group, []).append(ood_score.judge_fold(model, train_recs, held, SPLIT, hop))
            folds[group] = fold_summary(group, list(manifest.groups), results, held, cfg.window)
        test = split_windows(recordings, "test", cfg.window)
        mixed = [runs.run("time-split", seed, recordings, test, keep_logits=False) for seed in range(options.seeds)]
        model, best, _ = max(mixed, key=lambda m: (m[1]["best_val_acc"], -m[1]["seed"]))
        calibration = card_calibration(calibrate(held_logits)) if held_logits else None
        stats = ood_section = None
        if options.with_ood and cfg.shrinkage != "none":
            stats = ood_score.fit(model, recordings)
            ood_section = card_ood(ood_score.in_range_threshold(model, stats, recordings), judged)
        evaluation = card_evaluation(best, folds)
        training = card_training(best, manifest, rate, recipe, init_info)
        # Built beside the model folders under a name the server skips (it starts with '.'), then moved into place.
        staging = Path(repository) / f".{name}-{version}.partial-{os.getpid()}"
        try:
            write_version(
                staging,
                model,
                name,
                version,
                manifest,
                recordings,
                rate,
                options,
                (stats, ood_section) if stats is not None else None,
                calibration,
                evaluation,
                training,
                folds,
            )
            publish(staging, target, options.overwrite)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return target


def card_evaluation(best: dict, folds: dict) -> dict:
    test = best["test"]
    out = {
        "split": "test",
        "windows": test["windows"],
        "note": "the time split's test windows are the last 20% of every recording the model trained on",
        "noise_realisations_per_cell": test["repeats"],
        "accuracy": test["accuracy"],
        "report": "report.md",
    }
    if folds:
        out["held_out_groups"] = {
            "note": (
                "leave one group out: trained on the other groups, tested on every window of the held-out group "
                "(windows every half window; intervals count independent windows)"
            ),
            "folds": folds,
            "mean": {
                cell: round(float(np.mean([f["accuracy"][cell]["mean"] for f in folds.values()])), 4)
                for cell in next(iter(folds.values()))["accuracy"]
            },
        }
    return out


def card_training(best: dict, manifest: Manifest, rate: float, recipe: TrainConfig, init_info: dict | None) -> dict:
    return {
        "data": {
            "source": f"manifest {manifest.path.name}",
            "manifest_sha256": manifest.sha256,
            "resampled_to_hz": rate,
            "recordings": [r.describe() for r in manifest.rows],
        },
        "split": {"by": "time within each recording", "fractions": {k: list(v) for k, v in SPLIT.items()}},
        "recipe": best["train"],
        "noise": best["noise"],
        "seed": best["seed"],
        "best_epoch": best["best_epoch"],
        "best_val_acc": best["best_val_acc"],
        "train_seconds": round(best["train_seconds"], 1),
        "chosen_by": "best validation accuracy among the seeds of the time split",
        "init_from": init_info,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_version(
    folder: Path,
    model: DRSN,
    name: str,
    version: str,
    manifest: Manifest,
    recordings: list[PlantRecording],
    rate: float,
    options: Options,
    ood: tuple[ood_score.OodStats, dict] | None,
    calibration: dict | None,
    evaluation: dict,
    training: dict,
    folds: dict,
) -> dict:
    """The version folder's four files: <stem>.onnx, <stem>.json (the card, the folder's only .json),
    <stem>.golden.npz and report.md."""
    folder.mkdir(parents=True)
    stem = name.replace("-", "_")
    onnx_path = folder / f"{stem}.onnx"
    window = model.config.window
    metadata = {"name": name, "version": version, "classes": ",".join(manifest.classes)}
    x_test, _ = split_windows(recordings, "test", window)
    check = export_checked(model, onnx_path, metadata, ood[0] if ood else None, x_test)
    golden = folder / f"{stem}.golden.npz"
    picked = golden_windows(recordings, window)
    if options.golden_windows is not None:
        picked = fewer_golden(*picked, options.golden_windows)
    write_golden(onnx_path, *picked, golden)
    card = {
        **serving_card(model, name, version, onnx_path, list(manifest.classes), rate, ood[1] if ood else None),
        "input_range": input_range(recordings, window, unit=options.unit),
        "operating_conditions": operating_conditions(manifest, rate, options.sensor),
        "evaluation": evaluation,
        **({"calibration": calibration} if calibration else {}),
        "training": training,
        "golden": golden.name,
        "parity": check,
    }
    write_card(folder / f"{stem}.json", card)
    write_report(folder / "report.md", card, folds, manifest, options.command)
    return card


def fewer_golden(
    windows: np.ndarray, labels: np.ndarray, snr_db: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most `limit` of golden_windows' windows (a window of 8192 float32 samples is 32 KB), spread over the
    classes: every class's first clean window, then every class's noisy one, then the second clean ones; kept in
    golden_windows' order."""
    noisy = ~np.isnan(snr_db)
    seen: dict[tuple[int, bool], int] = {}
    rounds = []
    for label, is_noisy in zip(labels.tolist(), noisy.tolist(), strict=True):
        k = seen.get((label, is_noisy), 0)
        seen[(label, is_noisy)] = k + 1
        rounds.append(2 * k + is_noisy)  # clean #1, noisy #1, clean #2, ...
    keep = np.sort(np.lexsort((labels, rounds))[:limit])
    return windows[keep], labels[keep], snr_db[keep]


def publish(staging: Path, target: Path, overwrite: bool) -> None:
    """Move the finished version folder into place: a server scanning the repository never sees half a version, nor
    a model folder without one."""
    if target.exists():
        if not overwrite:
            raise ManifestError(f"{target} appeared while training: choose another --version, or pass --overwrite")
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
