"""Command line: `python -m drsntrain reproduce` (the whole study) or `train` (one model)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .bench import onnx_throughput
from .data import REPO_ROOT, DataNotFoundError, load_recordings, loads, split_windows
from .experiments import ARCHS, Run, execute, lolo_runs, run_all, study_runs
from .export import export_onnx, load_checkpoint
from .model import ModelConfig, parameter_count
from .report import write_report
from .ship import ship
from .train import NoiseProtocol, TrainConfig

MODELS_DIR = REPO_ROOT / "models"
RUNS_DIR = REPO_ROOT / "models" / "training" / "runs"
SHIPPED_NAME = "drsn-cw-cwru"
TRAIN_BATCH = 64  # not the paper's 128: see models/training/README.md
PAPER_STAGES = 3  # the paper-protocol runs keep the paper's depth


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
    p.add_argument("--window", type=int, default=2048, help="window length in samples (default 2048)")
    p.add_argument("--width", type=int, default=3, help="channel multiplier over the paper's 4-8-16 (default 3)")
    p.add_argument("--units", type=int, default=4, help="residual units per stage (default 4)")
    p.add_argument("--stages", type=int, default=3, help="stages of residual units (default 3, the paper's)")
    p.add_argument("--stem-kernel", type=int, default=3, help="first layer's kernel (default 3, the paper's)")
    p.add_argument("--stem-stride", type=int, default=2, help="first layer's stride (default 2, the paper's)")
    p.add_argument("--speed", type=float, default=0.0, help="random speed change of training windows, +-fraction")
    p.add_argument("--hop", type=int, default=512, help="mean spacing of training windows (default 512)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument(
        "--batch",
        type=int,
        default=TRAIN_BATCH,
        help=f"training batch size (default {TRAIN_BATCH}; the paper-protocol runs keep the paper's 128)",
    )
    p.add_argument("--jobs", type=int, default=2, help="parallel training processes, one thread each")


def cmd_reproduce(args) -> None:
    started = time.perf_counter()
    recordings = load_recordings(args.data_dir)
    models_dir, runs_dir = Path(args.out), Path(args.runs_dir)
    base = model_config(args, "cw", args.width, args.stages)
    paper = model_config(args, "cw", args.paper_width, PAPER_STAGES)
    runs = study_runs(args.seeds, args.epochs, base, args.hop, paper, args.paper_epochs, args.paper_seeds, args.batch)
    results = run_all(runs, args.data_dir, runs_dir, args.jobs)
    # Wall time spent running the study, summed over resumed invocations.
    timing_file = runs_dir / "timing.json"
    study_seconds = json.loads(timing_file.read_text())["study_seconds"] if timing_file.exists() else 0.0
    study_seconds += time.perf_counter() - started
    timing_file.write_text(json.dumps({"study_seconds": study_seconds}))
    started = time.perf_counter()

    # The shipped model: the DRSN-CW seed with the best validation accuracy (test unseen).
    cw = [r for r in results.values() if r["protocol"] == "mixed" and r["arch"] == "cw"]
    best = max(cw, key=lambda r: (r["best_val_acc"], -r["seed"]))
    model = load_checkpoint(runs_dir / best["run"] / "model.pt")
    card = ship(
        model,
        SHIPPED_NAME,
        models_dir,
        recordings,
        evaluation=card_evaluation(best),
        training=card_training(best, "best validation accuracy among the DRSN-CW seeds"),
    )

    x_test, _ = split_windows(recordings, "test", base.window)
    bench, params = {}, {}
    for arch in ARCHS:
        path = runs_dir / "onnx" / f"{arch}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        arch_model = load_checkpoint(runs_dir / f"mixed/{arch}-s0" / "model.pt")
        params[arch] = parameter_count(arch_model)
        export_onnx(arch_model, path)
        bench[arch] = onnx_throughput(path, x_test[:64], batch=64, threads=1)
    elapsed = study_seconds + time.perf_counter() - started
    train_seconds = sum(r["train_seconds"] + r.get("eval_seconds", 0) for r in results.values())
    write_report(
        models_dir / "reports",
        results,
        shipped=best,
        card=card,
        bench=bench,
        params=params,
        timing={"wall_seconds": elapsed, "run_seconds": train_seconds, "jobs": args.jobs},
        command=" ".join(["python -m drsntrain", *sys.argv[1:]]),
    )
    print(f"shipped {card['onnx']} (sha256 {card['sha256'][:12]}...), report in models/reports/")


def card_evaluation(result: dict) -> dict:
    test = result["test"]
    return {
        "split": "test",
        "windows": test["windows"],
        "noise_realisations_per_cell": test["repeats"],
        "accuracy": test["accuracy"],
        "report": "models/reports/README.md",
    }


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
    summary["windows_per_s"] = onnx_cost(load_checkpoint(Path(args.runs_dir) / runs[0].name / "model.pt"))
    (Path(args.runs_dir) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def onnx_cost(model) -> float:
    """Windows/s in ONNX Runtime, batch 64, one thread, on random windows (cost does not depend on the values)."""
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        export_onnx(model, path)
        x = np.random.default_rng(0).normal(size=(64, model.config.window)).astype(np.float32)
        return onnx_throughput(path, x, batch=64, threads=1)["windows_per_s"]


def lolo_summary(results: list[dict]) -> dict:
    """Mean over folds and seeds of validation accuracy and of the headline test cells, per architecture."""
    import numpy as np

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drsntrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="train every architecture and seed, ship the model, write the report")
    add_common(rep)
    rep.add_argument("--seeds", type=int, default=3)
    rep.add_argument("--paper-epochs", type=int, default=40)
    rep.add_argument("--paper-seeds", type=int, default=3)
    rep.add_argument("--paper-width", type=int, default=1, help="width of the paper-protocol runs (default 1)")
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
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except DataNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
