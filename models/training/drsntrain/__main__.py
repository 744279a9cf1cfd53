"""Command line: `python -m drsntrain reproduce` (the whole study), `train` (one model), `lolo`, `pareto`,
`condition-windows` (per-window outputs of the fold models on their held-out loads) and `manifest` (train on a plant's
own recordings and write a model-repository version)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import condition_windows as cw_windows
from . import folds, ood
from .bench import onnx_throughput
from .calibrate import choose
from .data import CLASSES, REPO_ROOT, DataNotFoundError, hold_out_loads, load_recordings, loads, split_fractions
from .experiments import ARCHS, HELDOUT_HOP_DIVISOR, PILOTS, Run, execute, lolo_runs, run_all, study_runs
from .export import export_onnx, load_checkpoint
from .manifest import ManifestError
from .model import DRSN, ModelConfig, parameter_count
from .ood import OodStats, WithOod
from .plant import Options, build
from .report import write_report
from .ship import PARITY_TOLERANCE, ship
from .train import NoiseProtocol, TrainConfig, predict

MODELS_DIR = REPO_ROOT / "models"
RUNS_DIR = REPO_ROOT / "models" / "training" / "runs"
SHIPPED_NAME = "drsn-cw-cwru"
TRAIN_BATCH = 64  # not the paper's 128: see models/training/README.md
PAPER_STAGES = 3  # the paper-protocol runs keep the paper's depth
# The shipped recipe, chosen by validation on the training loads of the leave-one-load-out folds (see
# models/training/README.md): 8192-sample windows, a wide stem (kernel 64, stride 32), 16-32-64 channels, two units
# per stage, random speed changes of +-4%. Every command starts from it.
RECIPE = {"window": 8192, "width": 4, "units": 2, "stem_kernel": 64, "stem_stride": 32, "speed": 0.04}


def paper_config(arch: str) -> ModelConfig:
    """The paper's network (Zhao et al. 2020): 2048-sample windows, a kernel-3 stem, 4-8-16 channels, 4 units."""
    return ModelConfig(shrinkage=arch, window=2048, stem_channels=4, stages=((4, 4), (8, 4), (16, 4)))


def model_config(args, arch: str, width: int, stages: int) -> ModelConfig:
    """The paper's 4-8-16 network, `width` times wider, with `stages` stages (each doubling the channels and
    halving the length) of `--units` units."""
    channels = tuple(4 * width * 2**i for i in range(stages))
    return ModelConfig(
        shrinkage=arch,
        stem_channels=4 * width,
        stem_kernel=args.stem_kernel,
        stem_stride=args.stem_stride,
        stages=tuple((c, args.units) for c in channels),
        window=args.window,
    )


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="CWRU folder (default $DRSN_CWRU_DIR or ../shared/data/cwru)")
    p.add_argument("--window", type=int, default=RECIPE["window"], help="window length in samples")
    p.add_argument("--width", type=int, default=RECIPE["width"], help="channel multiplier over the paper's 4-8-16")
    p.add_argument("--units", type=int, default=RECIPE["units"], help="residual units per stage")
    p.add_argument("--stages", type=int, default=3, help="stages of residual units (default 3, the paper's)")
    p.add_argument("--stem-kernel", type=int, default=RECIPE["stem_kernel"], help="first layer's kernel (paper: 3)")
    p.add_argument("--stem-stride", type=int, default=RECIPE["stem_stride"], help="first layer's stride (paper: 2)")
    p.add_argument(
        "--speed", type=float, default=RECIPE["speed"], help="random speed change of training windows, +-fraction"
    )
    p.add_argument("--hop", type=int, default=512, help="mean spacing of training windows (default 512)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument(
        "--batch",
        type=int,
        default=TRAIN_BATCH,
        help=f"training batch size (default {TRAIN_BATCH}; the paper-protocol runs keep the paper's 128)",
    )
    p.add_argument("--jobs", type=int, default=2, help="parallel training processes, one thread each")


def recipe_train(args, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        seed=seed,
        train_hop=args.hop,
        batch_size=args.batch,
        speed_perturb=args.speed,
        train_fraction=getattr(args, "train_fraction", TrainConfig.train_fraction),
    )


def cmd_reproduce(args) -> None:
    """The study of the shipped recipe (leave-one-load-out folds, then the time split), the shipped model with its
    calibration, and the report."""
    recordings = load_recordings(args.data_dir, extra_healthy=recipe_train(args).extra_healthy)
    models_dir, runs_dir = Path(args.out), Path(args.runs_dir)
    base = model_config(args, "cw", args.width, args.stages)
    archs = tuple(args.archs.split(","))
    paper = paper_config("cw") if args.paper_seeds else None
    runs = study_runs(
        loads(recordings), args.seeds, archs, base, recipe_train(args), paper, args.paper_epochs, args.paper_seeds
    )
    results = run_all(runs, args.data_dir, runs_dir, args.jobs)
    if args.runs_only:
        print(f"{len(results)} runs done in {runs_dir}")
        return
    started = time.perf_counter()
    torch.set_num_threads(args.jobs)
    summary = folds.summarise(results, runs_dir)
    decision = folds.verdict(summary)

    # Calibration on loads the models never saw: the DRSN-CW study runs' held-out logits, fitted on the
    # extrapolation folds, judged on the interpolation fold.
    held = {"extrapolation": [], "interpolation": []}
    for r in heldout_runs(results, "cw", "study"):
        held[folds.fold_kind(r["train_loads"], r["test_loads"])].append(folds.load_heldout(runs_dir, r["run"]))
    calibration = choose(held["extrapolation"], held["interpolation"])

    # The out-of-distribution score on every DRSN-CW study fold: its own statistics and threshold, judged on the
    # loads it never saw.
    ood_folds = {}
    for r in heldout_runs(results, "cw", "study"):
        model = load_checkpoint(runs_dir / r["run"] / "model.pt")
        train_recs, held_recs = hold_out_loads(recordings, r["test_loads"])
        fractions = split_fractions(r["train"]["train_fraction"])
        hop = r["model"]["window"] // HELDOUT_HOP_DIVISOR
        ood_folds[r["run"]] = {
            "protocol": r["protocol"],
            "kind": folds.fold_kind(r["train_loads"], r["test_loads"]),
            **ood.judge_fold(model, train_recs, held_recs, fractions, hop),
        }

    # The shipped model: trained on every load with the recipe; the DRSN-CW seed with the best validation accuracy.
    cw = [r for r in results.values() if r["protocol"] == "mixed" and r["arch"] == "cw"]
    best = max(cw, key=lambda r: (r["best_val_acc"], -r["seed"]))
    model = load_checkpoint(runs_dir / best["run"] / "model.pt")
    stats = ood.fit(model, recordings)
    limit = ood.in_range_threshold(model, stats, recordings)
    far = ood.far_checks(model, stats, limit, recordings, ood.mistaken_inputs(recordings))
    card = ship(
        model,
        SHIPPED_NAME,
        models_dir,
        recordings,
        evaluation=card_evaluation(best, summary),
        training=card_training(best, "best validation accuracy among the DRSN-CW seeds"),
        calibration=card_calibration(calibration),
        ood=(stats, card_ood(limit, ood_folds, far)),
    )
    bench = cost_side_by_side(args, archs)
    pilots_file = models_dir / "reports" / "pilots.json"
    pilots = json.loads(pilots_file.read_text()) if pilots_file.exists() else {}
    train_seconds = sum(r["train_seconds"] + r.get("eval_seconds", 0) for r in results.values())
    write_report(
        models_dir / "reports",
        results,
        shipped=best,
        card=card,
        bench=bench,
        calibration=calibration,
        pilots=pilots,
        timing={"run_seconds": train_seconds, "jobs": args.jobs, "finish_seconds": time.perf_counter() - started},
        command=" ".join(["python -m drsntrain", *sys.argv[1:]]),
        folds_summary=summary,
        decision=decision,
        ood={"folds": ood_folds, "far": far, "threshold": limit},
    )
    verdict = "better" if decision.get("ship") else "NOT better"
    print(f"shipped {card['onnx']} (sha256 {card['sha256'][:12]}...): the recipe is {verdict} than 2.0.0's on the")
    print("extrapolation folds (models/reports/README.md)")


def heldout_runs(results: dict[str, dict], arch: str, recipe: str) -> list[dict]:
    """The runs of one architecture and recipe tested on held-out loads, in run order."""
    return [
        r for r in results.values() if r.get("test_loads") and r["arch"] == arch and r.get("recipe", "study") == recipe
    ]


def card_ood(limit: float, ood_folds: dict, far: dict) -> dict:
    """The card's `ood` section: the threshold the server turns windows UNCERTAIN above, and what it is worth."""
    extrapolation = [f for f in ood_folds.values() if f["kind"] == "extrapolation"]
    aurocs = [f["cells"]["clean"]["auroc"]["mahalanobis"] for f in extrapolation]
    return {
        "output": "ood_score",
        "uncertain_above": round(limit, 3),
        "method": (
            "squared Mahalanobis distance of the pooled features to the nearest class mean (one covariance shared by "
            "the classes), fitted on the training windows clean and with the training noise; the threshold lets "
            f"{100 * ood.IN_RANGE_QUANTILE:g}% of the validation windows (training noise) through"
        ),
        "auroc_held_out_load_clean": {"mean": round(float(np.mean(aurocs)), 3), "folds": len(aurocs)}
        if aurocs
        else None,
        "mistaken_inputs": {
            k: {"auroc": round(v["auroc"]["mahalanobis"], 3), "flagged": round(v["flagged"], 3)}
            for k, v in far.items()
            if isinstance(v, dict)
        },
        "report": "models/reports/README.md",
    }


def cost_side_by_side(args, archs: tuple[str, ...]) -> dict:
    """Windows/s in ONNX Runtime (batch 64, one thread) of the shipped recipe's architectures, the previous shipped
    architecture (1.1.0) and the paper's network, measured one after another in this run (cost does not depend on
    the weights: fresh networks)."""
    nets = {f"recipe-{a}": model_config(args, a, args.width, args.stages) for a in archs}
    nets["shipped-1.1.0"] = ModelConfig(
        shrinkage="cw", window=2048, stem_channels=12, stages=((12, 4), (24, 4), (48, 4))
    )
    nets["paper"] = paper_config("cw")
    out = {
        name: {"parameters": parameter_count(DRSN(cfg)), "window": cfg.window, **cost(cfg)}
        for name, cfg in nets.items()
    }
    if "cw" in archs:
        cfg = nets["recipe-cw"]
        out["recipe-cw-ood"] = {"parameters": parameter_count(DRSN(cfg)), "window": cfg.window, **cost(cfg, ood=True)}
    return out


def cost(cfg: ModelConfig, ood: bool = False) -> dict:
    """ONNX Runtime windows/s of a fresh network of `cfg`, batch 64, one thread; with `ood`, with the
    out-of-distribution output as shipped (statistics of the right shapes)."""
    import tempfile

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        net = DRSN(cfg)
        features = cfg.stages[-1][0]
        stats = OodStats(np.zeros((cfg.classes, features), np.float32), np.eye(features, dtype=np.float32))
        export_onnx(net, path, ood=WithOod(net, stats) if ood else None)
        x = np.random.default_rng(0).normal(size=(64, cfg.window)).astype(np.float32)
        return onnx_throughput(path, x, batch=64, threads=1)


def card_calibration(c: dict) -> dict:
    chosen = c["candidates"][c["chosen"]]
    return {
        "temperature": round(c["temperature"], 4),
        "uncertain_below": round(c["uncertain_below"], 4),
        "method": (
            f"temperature scaling fitted on the {c['chosen']} folds' held-out loads (every noise cell and clean); "
            f"uncertain_below: the lowest confidence at which those windows are {100 * c['target_precision']:g}% "
            "right; judged on the folds the fit never saw (models/reports/README.md)"
        ),
        "on_extrapolation": {k: round(v, 4) for k, v in chosen["on_extrapolation"].items() if v is not None},
        "on_interpolation": {k: round(v, 4) for k, v in chosen["on_interpolation"].items() if v is not None},
        "one_temperature_serves_both": c["one_serves_both"],
    }


def cmd_pareto(args) -> None:
    """Every recipe tried on the leave-one-load-out folds (one seed, DRSN-CW), and its cost measured side by side;
    writes models/reports/pilots.json for the report."""
    recordings = load_recordings(args.data_dir)
    folds = loads(recordings)
    out = {}
    for name, overrides in PILOTS.items():
        a = argparse.Namespace(**{**vars(args), **overrides})
        runs = lolo_runs(folds, 1, ("cw",), model_config(a, "cw", a.width, a.stages), recipe_train(a))
        results = run_all(runs, args.data_dir, Path(args.runs_dir) / name, args.jobs)
        out[name] = {"settings": overrides, **lolo_summary(list(results.values()))["cw"]}
    for name, overrides in PILOTS.items():
        a = argparse.Namespace(**{**vars(args), **overrides})
        out[name]["windows_per_s"] = cost(model_config(a, "cw", a.width, a.stages))["windows_per_s"]
    path = Path(args.out) / "reports" / "pilots.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


def card_evaluation(result: dict, summary: dict | None = None) -> dict:
    """The time split's test grid of the shipped model, and, when the study ran, the held-out folds by kind (the
    DRSN-CW study runs, mean over seeds, with the windows behind each figure): what to expect at a load the model
    never saw, on the same bearings."""
    test = result["test"]
    out = {
        "split": "test",
        "windows": test["windows"],
        "note": "the time split's test windows are the last 20% of every recording the model trained on",
        "noise_realisations_per_cell": test["repeats"],
        "accuracy": test["accuracy"],
        "report": "models/reports/README.md",
    }
    folds_cw = (summary or {}).get("study", {}).get("cw", {})
    if folds_cw:
        out["held_out_loads"] = {
            "note": (
                "same bearings at other loads (CWRU has one bearing per fault and load); windows overlap by half, "
                "intervals count independent windows"
            ),
            "folds": {
                protocol: {
                    "kind": f["kind"],
                    "train_loads": f["train_loads"],
                    "test_loads": f["test_loads"],
                    "seeds": f["seeds"],
                    "windows": f["windows"],
                    "independent_windows": round(f["independent"], 1),
                    "healthy_independent_windows": round(f["healthy_independent"], 1),
                    "accuracy": {
                        k: {
                            "mean": round(c["accuracy"]["mean"], 4),
                            "ci95": [round(v, 4) for v in c["accuracy"]["ci95"]],
                        }
                        for k, c in f["cells"].items()
                    },
                }
                for protocol, f in folds_cw.items()
            },
        }
    return out


def mean_std(values: list[float]) -> dict:
    v = np.array(values)
    return {"mean": round(float(v.mean()), 5), "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 5)}


def card_training(result: dict, chosen: str) -> dict:
    return {
        "recipe": result["train"],
        "noise": result["noise"],
        "seed": result["seed"],
        "best_epoch": result["best_epoch"],
        "best_val_acc": result["best_val_acc"],
        "train_seconds": round(result["train_seconds"], 1),
        "chosen_by": chosen,
    }


def cmd_train(args) -> None:
    """Train, evaluate and ship one model (e.g. on your own data)."""
    recordings = load_recordings(args.data_dir)
    run = Run(
        "mixed",
        model_config(args, args.arch, args.width, args.stages),
        TrainConfig(
            epochs=args.epochs,
            seed=args.seed,
            train_hop=args.hop,
            threads=args.threads,
            batch_size=args.batch,
            speed_perturb=args.speed,
        ),
        NoiseProtocol(),
    )
    runs_dir = Path(args.out) / "runs"
    result = execute(run, args.data_dir, runs_dir)
    model = load_checkpoint(runs_dir / run.name / "model.pt")
    card = ship(
        model,
        args.name,
        Path(args.out),
        recordings,
        evaluation=card_evaluation(result),
        training=card_training(result, "single run"),
    )
    print(json.dumps({"onnx": card["onnx"], "accuracy": card["evaluation"]["accuracy"]}, indent=1))


def cmd_lolo(args) -> None:
    """Leave-one-load-out for one recipe: every fold, seed and architecture; prints the fold means."""
    recordings = load_recordings(args.data_dir)
    train_config = TrainConfig(
        epochs=args.epochs,
        train_hop=args.hop,
        batch_size=args.batch,
        speed_perturb=args.speed,
        train_fraction=args.train_fraction,
    )
    folds = [int(x) for x in args.loads.split(",")] if args.loads else loads(recordings)
    runs = lolo_runs(
        folds,
        args.seeds,
        tuple(args.archs.split(",")),
        model_config(args, "cw", args.width, args.stages),
        train_config,
    )
    results = run_all(runs, args.data_dir, Path(args.runs_dir), args.jobs)
    summary = lolo_summary(list(results.values()))
    summary["windows_per_s"] = cost(runs[0].model)["windows_per_s"]
    (Path(args.runs_dir) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def cmd_condition_windows(args) -> None:
    """Per-window outputs of the shipped recipe's fold models (DRSN-CW, seed 0) on the loads they never saw, as the
    server windows a stream, and of the shipped model itself on every whole recording of its training loads (the
    healthy baseline with many noise draws): models/reports/condition_windows.json.gz (see condition_windows.py).
    Trains the folds that the runs folder lacks (`make reproduce` runs are reused)."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    recordings = load_recordings(args.data_dir)
    runs_dir = Path(args.runs_dir)
    card = json.loads(Path(args.card).read_text())
    if card["classes"] != list(CLASSES):
        raise ValueError(f"{args.card}: classes {card['classes']} are not the training order {list(CLASSES)}")
    runs = lolo_runs(
        loads(recordings), 1, ("cw",), model_config(args, "cw", args.width, args.stages), recipe_train(args)
    )
    run_all(runs, args.data_dir, runs_dir, args.jobs)
    heldout = {}
    for run in runs:
        with np.load(runs_dir / run.name / "heldout.npz") as z:
            heldout[run.test_loads[0]] = dict(z)
    # A fold's calibration comes from the other folds' held-out loads; with a single fold there are none.
    fitted = cw_windows.cross_fitted(heldout) if len(heldout) > 1 else {}
    card_cal = card["calibration"]
    folds = []
    for run in runs:
        model = load_checkpoint(runs_dir / run.name / "model.pt")
        cal = fitted.get(run.test_loads[0])
        val = cw_windows.validation_fit(
            model, recordings, run.test_loads[0], run.model.window, run.train.train_fraction
        )
        folds.append(
            cw_windows.Fold(
                heldout_load=run.test_loads[0],
                run=run.name,
                model=model,
                temperature=cal["temperature"] if cal else card_cal["temperature"],
                uncertain_below=cal["uncertain_below"] if cal else card_cal["uncertain_below"],
                calibration="fold" if cal else "card",
                extra={"validation_fit": val},
            )
        )
    if card["input"]["window"] != runs[0].model.window:
        raise ValueError(f"{args.card}: window {card['input']['window']} is not the recipe's {runs[0].model.window}")
    shipped = cw_windows.Shipped(
        model=shipped_model(Path(args.checkpoint), Path(args.card).parent / card["golden"]),
        temperature=card_cal["temperature"],
        uncertain_below=card_cal["uncertain_below"],
        version=card["version"],
    )
    doc = cw_windows.condition_windows(recordings, folds, runs[0].model.window, shipped=shipped)
    doc["notes"] = cw_windows.notes(card)
    doc["shipped"]["note"] = cw_windows.shipped_note(card, display_path(Path(args.checkpoint)))
    doc["card"] = {
        "name": card["name"],
        "version": card["version"],
        "temperature": card_cal["temperature"],
        "uncertain_below": card_cal["uncertain_below"],
    }
    size = cw_windows.write(doc, Path(args.out))
    summary = {
        "out": args.out,
        "bytes": size,
        "sequences": len(doc["sequences"]),
        "seconds": round(time.perf_counter() - started, 1),
        "folds": [
            {k: f[k] for k in ("heldout_load", "run", "temperature", "uncertain_below", "calibration", "accuracy")}
            | {"healthy_windows": f["healthy_windows"]}
            for f in doc["folds"]
        ],
        "shipped": {k: doc["shipped"][k] for k in ("version", "accuracy", "healthy_labelled_fault")},
    }
    print(json.dumps(summary, indent=1))


def display_path(path: Path) -> str:
    """path relative to the repository when it lies inside it (the file written does not name this machine)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def shipped_model(checkpoint: Path, golden: Path) -> DRSN:
    """The shipped checkpoint, after checking that it gives the logits ONNX Runtime gave for the card's golden
    windows (so it is the model the server runs)."""
    model = load_checkpoint(checkpoint)
    with np.load(golden) as z:
        logits, _ = predict(model, z["windows"])
        diff = float(np.abs(logits - z["logits"]).max())
    if diff > PARITY_TOLERANCE:
        raise ValueError(f"{checkpoint}: logits differ from {golden} by {diff:.2e} (> {PARITY_TOLERANCE:g})")
    return model


def lolo_summary(results: list[dict]) -> dict:
    """Mean over folds and seeds of validation accuracy and of the headline test cells, per architecture."""

    cells = [("clean", None), ("gaussian", -8), ("laplacian", -8), ("pink", -8), ("gaussian", -10)]
    out: dict = {}
    for arch in sorted({r["arch"] for r in results}):
        rs = [r for r in results if r["arch"] == arch]
        row = {"runs": len(rs), "val": float(np.mean([r["best_val_acc"] for r in rs]))}
        for t, snr in cells:
            key = t if snr is None else f"{t}{snr}"
            vals = [r["test"]["accuracy"][t] if snr is None else r["test"]["accuracy"][t][f"{snr:g}"] for r in rs]
            row[key] = float(np.mean(vals))
        out[arch] = row
    return out


def cmd_manifest(args) -> None:
    """Train on the recordings a manifest lists; write DIR/NAME/VERSION/ (ONNX, card, golden file, report.md)."""
    try:
        snrs = tuple(float(s) for s in args.snr.split(",") if s.strip())
    except ValueError:
        raise ManifestError(f"--snr {args.snr!r}: comma-separated SNRs in dB, e.g. -4,-8") from None
    options = Options(
        window=args.window,
        rate_hz=args.rate,
        epochs=args.epochs,
        seeds=args.seeds,
        init_from=Path(args.init_from) if args.init_from else None,
        unit=args.unit,
        sensor=args.sensor,
        width=args.width,
        units=args.units,
        stages=args.stages,
        stem_kernel=args.stem_kernel,
        stem_stride=args.stem_stride,
        speed=args.speed,
        hop=args.hop,
        batch=args.batch,
        lr=args.lr,
        threads=args.threads,
        folds=not args.no_folds,
        with_ood=not args.no_ood,
        snrs_db=snrs,
        repeats=args.repeats,
        runs_dir=Path(args.runs_dir) if args.runs_dir else None,
        golden_windows=args.golden_windows,
        overwrite=args.overwrite,
        command=" ".join(["python -m drsntrain", *args.argv]),
    )
    folder = build(args.manifest, args.repository, args.name, args.version, options)
    card = json.loads(next(folder.glob("*.json")).read_text())
    held = card["evaluation"].get("held_out_groups")
    print(
        json.dumps(
            {
                "version_folder": str(folder),
                "files": sorted(p.name for p in folder.iterdir()),
                "classes": card["classes"],
                "accuracy": card["evaluation"]["accuracy"],
                "held_out_groups": {g: f["accuracy"]["clean"]["mean"] for g, f in held["folds"].items()}
                if held
                else None,
                "calibration": {k: card["calibration"][k] for k in ("temperature", "uncertain_below")}
                if "calibration" in card
                else None,
            },
            indent=1,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drsntrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="train every architecture and seed, ship the model, write the report")
    add_common(rep)
    rep.add_argument("--seeds", type=int, default=2)
    rep.add_argument("--runs-only", action="store_true", help="train and evaluate the runs, then stop")
    rep.add_argument("--archs", default="cw", help="comma-separated: cw, cs, none (default cw; none adds the ResNet)")
    rep.add_argument("--paper-epochs", type=int, default=40)
    rep.add_argument(
        "--paper-seeds", type=int, default=0, help="seeds of the paper's fixed-SNR protocol (default 0: not run)"
    )
    rep.add_argument("--out", default=str(MODELS_DIR), help="where the shipped model and reports/ go")
    rep.add_argument("--runs-dir", default=str(RUNS_DIR), help="checkpoints and results of every run")
    rep.set_defaults(func=cmd_reproduce)
    tr = sub.add_parser("train", help="train, evaluate and ship one model")
    add_common(tr)
    tr.add_argument("--arch", choices=ARCHS, default="cw")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--name", default="drsn-cw-custom")
    tr.add_argument("--out", required=True, help="folder for the ONNX file, card, golden file and runs")
    tr.set_defaults(func=cmd_train)
    lo = sub.add_parser("lolo", help="leave-one-load-out for one recipe (every fold); prints the fold means")
    add_common(lo)
    lo.add_argument("--seeds", type=int, default=1)
    lo.add_argument("--archs", default="cw", help="comma-separated: cw, cs, none (default cw)")
    lo.add_argument("--runs-dir", required=True, help="checkpoints and results of every run")
    lo.add_argument("--loads", help="held-out loads to run, comma-separated (default: every load)")
    lo.add_argument("--train-fraction", type=float, default=0.6, help="share of each seen recording trained on")
    lo.set_defaults(func=cmd_lolo)
    pa = sub.add_parser("pareto", help="every recipe tried, on the folds, with its cost: models/reports/pilots.json")
    add_common(pa)
    pa.add_argument("--runs-dir", default=str(RUNS_DIR / "pilots"), help="one folder of runs per recipe")
    pa.add_argument("--out", default=str(MODELS_DIR), help="where reports/pilots.json goes")
    pa.add_argument("--train-fraction", type=float, default=0.6, help="share of each seen recording trained on")
    pa.set_defaults(func=cmd_pareto)
    cwin = sub.add_parser(
        "condition-windows",
        help="per-window outputs of the fold models on their held-out loads: models/reports/condition_windows.json.gz",
    )
    add_common(cwin)
    cwin.add_argument("--runs-dir", default=str(RUNS_DIR), help="checkpoints and results of every run (reused)")
    cwin.add_argument("--card", default=str(MODELS_DIR / "drsn_cw_cwru.json"), help="the shipped model card")
    cwin.add_argument(
        "--out", default=str(MODELS_DIR / "reports" / "condition_windows.json.gz"), help="the gzip JSON written"
    )
    cwin.add_argument(
        "--checkpoint",
        default=str(MODELS_DIR / "drsn_cw_cwru.pt"),
        help="the shipped model's PyTorch checkpoint (checked against the card's golden file)",
    )
    cwin.set_defaults(func=cmd_condition_windows)
    mf = sub.add_parser(
        "manifest",
        help="train on your own recordings (a CSV manifest) and write a model-repository version DIR/NAME/VERSION/",
    )
    mf.add_argument("--manifest", required=True, help="CSV: path,label,group,sample_rate_hz[,channel]")
    mf.add_argument("--repository", required=True, help="the model repository folder (drsn-serve --model-repository)")
    mf.add_argument("--name", required=True, help="the model's name (its folder and the card's name)")
    mf.add_argument("--version", required=True, help="the version's folder and the card's version, e.g. 1.0.0")
    mf.add_argument("--window", type=int, help="window length in samples (default 8192, or the checkpoint's)")
    mf.add_argument("--rate", type=float, help="the model's sample rate (default: the recordings' if they agree)")
    mf.add_argument("--epochs", type=int, default=60)
    mf.add_argument("--seeds", type=int, default=1, help="seeds per fold and of the time split (default 1)")
    mf.add_argument("--init-from", help="fine-tune from a drsntrain checkpoint (.pt), e.g. models/drsn_cw_cwru.pt")
    mf.add_argument("--unit", default="g", help="unit of the samples, written into the card's input range")
    mf.add_argument("--sensor", help="the sensor, for the card's operating conditions (free text)")
    mf.add_argument("--width", type=int, help="channel multiplier over the paper's 4-8-16 (default 4)")
    mf.add_argument("--units", type=int, help="residual units per stage (default 2)")
    mf.add_argument("--stages", type=int, help="stages of residual units (default 3)")
    mf.add_argument("--stem-kernel", type=int, help="first layer's kernel (default 64)")
    mf.add_argument("--stem-stride", type=int, help="first layer's stride (default 32)")
    mf.add_argument("--speed", type=float, default=RECIPE["speed"], help="random speed change, +-fraction")
    mf.add_argument("--hop", type=int, default=512, help="mean spacing of training windows (default 512)")
    mf.add_argument("--batch", type=int, default=TRAIN_BATCH, help=f"batch size (default {TRAIN_BATCH})")
    mf.add_argument("--lr", type=float, help="learning rate (default 0.1; 0.01 with --init-from)")
    mf.add_argument("--threads", type=int, default=2)
    mf.add_argument("--snr", default="-4,-8", help="Gaussian noise SNRs (dB) of the noise study, besides clean")
    mf.add_argument("--repeats", type=int, default=2, help="noise realisations per noisy cell and window")
    mf.add_argument("--no-folds", action="store_true", help="the time split only: no folds, no calibration")
    mf.add_argument("--no-ood", action="store_true", help="no ood_score output")
    mf.add_argument("--runs-dir", help="keep every run here and reuse it on a rerun (default: a temporary folder)")
    mf.add_argument(
        "--golden-windows",
        type=int,
        help="at most this many windows in the golden file, spread over the classes (default: 3 per class)",
    )
    mf.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    mf.set_defaults(func=cmd_manifest)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.func(args)
    except (DataNotFoundError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
