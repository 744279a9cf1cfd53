"""The study: which runs make up the report, and running them in parallel processes.

A run is one (protocol, architecture, seed). Protocols: "lolo-<L>hp" (leave one load out: train on the other
loads, test on every window of load L: an extrapolation when L is the least or greatest load, an interpolation
otherwise), "only-<L>hp" (train on load L alone, test on every other load: the hardest extrapolation), "mixed" (the
time split: train, validate and test on segments of every recording, the shipped model's protocol) and
"paper-gaussian<snr>dB" (the paper's fixed-SNR protocol). A run folder prefixed "base-" holds the same protocol
trained with model 2.0.0's recipe (linear speed interpolation on every window, no healthy balance or fan-end
channel), the yardstick 2.1.0 must beat. Each run writes `model.pt` and `result.json` into its own folder under the
runs directory (held-out runs also `heldout.npz`, the held-out logits the calibration is fitted on, with each
window's recording and load); a run whose result exists is not redone, so an interrupted study resumes where it
stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import all_windows, data_settings, hold_out_loads, load_recordings, split_windows
from .evaluate import evaluate_grid
from .export import save_checkpoint
from .model import ModelConfig
from .train import NoiseProtocol, TrainConfig, train

ARCHS = ("none", "cs", "cw")
PAPER_SNRS_DB = (-10.0, -8.0, -6.0)

# Every recipe tried for the leave-one-load-out targets (one seed, DRSN-CW, 60 epochs, batch 64), by the name of its
# runs folder; the settings override the command's. The shipped recipe is the last one. `python -m drsntrain
# pareto` reruns them (reusing finished runs) and measures their cost side by side.
_2048 = {"window": 2048, "train_fraction": 0.6}
PILOTS: dict[str, dict] = {
    "ref-w3-k3s2-sp0": {**_2048, "width": 3, "units": 4, "stem_kernel": 3, "stem_stride": 2, "speed": 0.0},
    "w1-k3s2-sp4": {**_2048, "width": 1, "units": 4, "stem_kernel": 3, "stem_stride": 2, "speed": 0.04},
    "k64s8-w4-u2-sp0": {**_2048, "width": 4, "units": 2, "stem_kernel": 64, "stem_stride": 8, "speed": 0.0},
    "k64s8-w4-u2-sp4": {**_2048, "width": 4, "units": 2, "stem_kernel": 64, "stem_stride": 8, "speed": 0.04},
    "W4096-k64s16-w4-u2-sp4": {
        "window": 4096,
        "width": 4,
        "units": 2,
        "stem_kernel": 64,
        "stem_stride": 16,
        "speed": 0.04,
        "train_fraction": 0.6,
    },
    "W4096-k64s16-w4-u2-sp2": {
        "window": 4096,
        "width": 4,
        "units": 2,
        "stem_kernel": 64,
        "stem_stride": 16,
        "speed": 0.02,
        "train_fraction": 0.6,
    },
    "W4096-k64s16-w4-u2-sp4-tf8": {
        "window": 4096,
        "width": 4,
        "units": 2,
        "stem_kernel": 64,
        "stem_stride": 16,
        "speed": 0.04,
        "train_fraction": 0.8,
    },
    "W4096-k64s16-w4-u2-sp2-tf8": {
        "window": 4096,
        "width": 4,
        "units": 2,
        "stem_kernel": 64,
        "stem_stride": 16,
        "speed": 0.02,
        "train_fraction": 0.8,
    },
    "W4096-k32s16-w4-u2-sp2-tf8": {
        "window": 4096,
        "width": 4,
        "units": 2,
        "stem_kernel": 32,
        "stem_stride": 16,
        "speed": 0.02,
        "train_fraction": 0.8,
    },
    "W4096-k128s16-w6-u1-sp4": {
        "window": 4096,
        "width": 6,
        "units": 1,
        "stem_kernel": 128,
        "stem_stride": 16,
        "speed": 0.04,
        "train_fraction": 0.6,
    },
    "W8192-k64s32-w4-u2-sp4": {
        "window": 8192,
        "width": 4,
        "units": 2,
        "stem_kernel": 64,
        "stem_stride": 32,
        "speed": 0.04,
        "train_fraction": 0.6,
    },
}


# Model 2.0.0's recipe, as settings over the study's TrainConfig: the yardstick on the same folds.
BASELINE_2_0_0 = {"speed_method": "linear", "raw_share": 0.0, "balance": False, "extra_healthy": False}
# Held-out windows overlap by half: twice the windows of a back-to-back cut, counted as the samples they span.
HELDOUT_HOP_DIVISOR = 2


@dataclass(frozen=True)
class Run:
    protocol: str  # "lolo-<L>hp", "only-<L>hp", "mixed" or "paper-gaussian<snr>dB"
    model: ModelConfig
    train: TrainConfig
    noise: NoiseProtocol
    test_loads: tuple[int, ...] = ()  # the held-out loads of a LOLO or single-load run
    tag: str = ""  # "base-" for model 2.0.0's recipe

    @property
    def name(self) -> str:
        return f"{self.tag}{self.protocol}/{self.model.shrinkage}-s{self.train.seed}"

    def settings(self) -> dict:
        """What a stored result must have been trained with to be reused for this run."""
        return {
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "noise": asdict(self.noise),
            "data": data_settings(),
        }


def lolo_runs(
    loads: list[int], seeds: int, archs: tuple[str, ...], model: ModelConfig, train: TrainConfig, tag: str = ""
) -> list[Run]:
    """Leave-one-load-out: for every load, every seed and architecture trained on the other loads."""
    return [
        Run(f"lolo-{load}hp", replace(model, shrinkage=arch), replace(train, seed=seed), NoiseProtocol(), (load,), tag)
        for load in loads
        for seed in range(seeds)
        for arch in archs
    ]


def single_load_runs(
    loads: list[int], seeds: int, archs: tuple[str, ...], model: ModelConfig, train: TrainConfig, tag: str = ""
) -> list[Run]:
    """Train on one load alone, test on every other: for every load, seed and architecture."""
    return [
        Run(
            f"only-{load}hp",
            replace(model, shrinkage=arch),
            replace(train, seed=seed),
            NoiseProtocol(),
            tuple(other for other in loads if other != load),
            tag,
        )
        for load in loads
        for seed in range(seeds)
        for arch in archs
    ]


def study_runs(
    loads: list[int],
    seeds: int,
    archs: tuple[str, ...],
    model: ModelConfig,
    train: TrainConfig,
    paper_model: ModelConfig | None = None,
    paper_epochs: int = 40,
    paper_seeds: int = 0,
    baseline: bool = True,
) -> list[Run]:
    """The study of one recipe, most needed first (an interrupted study has the shipped model's evidence): DRSN-CW
    on the leave-one-load-out folds and the time split (the shipped model is chosen among its seeds), model 2.0.0's
    recipe on the same folds (the yardstick), the single-load folds of both, then the other architectures, then, if
    asked, the paper's fixed-SNR protocol with the paper's network and batch."""
    lead = ("cw",) if "cw" in archs else archs[:1]
    rest = tuple(a for a in archs if a not in lead)
    mixed = lambda arches: [  # noqa: E731
        Run("mixed", replace(model, shrinkage=arch), replace(train, seed=seed), NoiseProtocol())
        for seed in range(seeds)
        for arch in arches
    ]
    base = replace(train, **BASELINE_2_0_0)
    runs = lolo_runs(loads, seeds, lead, model, train) + mixed(lead)
    if baseline:
        runs += lolo_runs(loads, seeds, lead, model, base, tag="base-")
    runs += single_load_runs(loads, seeds, lead, model, train)
    if baseline:
        runs += single_load_runs(loads, seeds, lead, model, base, tag="base-")
    runs += lolo_runs(loads, seeds, rest, model, train) + mixed(rest)
    for snr in PAPER_SNRS_DB if paper_model is not None else ():
        for seed in range(paper_seeds):
            for arch in archs:
                runs.append(
                    Run(
                        f"paper-gaussian{snr:g}dB",
                        replace(paper_model, shrinkage=arch),
                        TrainConfig(epochs=paper_epochs, seed=seed, train_hop=train.train_hop),
                        NoiseProtocol(kind="fixed", noise_type="gaussian", snr_db=snr),
                    )
                )
    return runs


def execute(run: Run, data_dir: str | None, runs_dir: Path, position: int = 0) -> dict:
    """Train and evaluate one run; write its checkpoint and result.

    A held-out run is tested on every window of its held-out loads, overlapping by half ("test"), and, separately,
    on those loads' test segments ("test_segment"); the other runs on the test segments of every recording.
    """
    recordings = load_recordings(data_dir, extra_healthy=run.train.extra_healthy)
    window = run.model.window
    hop = window // HELDOUT_HOP_DIVISOR
    if not run.test_loads:
        train_recs, held = recordings, None
        test_sets = {"test": split_windows(recordings, "test", window)}
    else:
        train_recs, held = hold_out_loads(recordings, list(run.test_loads))
        x, y, src = all_windows(held, window, hop)
        test_sets = {"test": (x, y), "test_segment": split_windows(held, "test", window)}
    model, log = train(train_recs, run.model, run.train, run.noise, progress=run.name, position=position)
    cells = None if run.noise.kind == "mixed" else [(run.noise.noise_type, run.noise.snr_db)]
    confusion_snr = run.noise.snr_db if cells else -8.0
    started = time.perf_counter()
    result = {
        "run": run.name,
        "protocol": run.protocol,
        "recipe": "2.0.0" if run.tag == "base-" else "study",
        "arch": run.model.shrinkage,
        "seed": run.train.seed,
        "test_loads": list(run.test_loads),
        "train_loads": sorted({r.load_hp for r in train_recs}),
        "data": data_settings(),
        **log,
    }
    out = runs_dir / run.name
    out.mkdir(parents=True, exist_ok=True)
    heldout: dict = {}
    for key, (x, y) in test_sets.items():
        keep = heldout if (held is not None and key == "test") else None
        result[key] = evaluate_grid(model, x, y, cells=cells, confusion_snr=confusion_snr, logits_out=keep)
    if heldout:
        heldout["recording"] = src
        heldout["load"] = np.array([held[i].load_hp for i in src], dtype=np.int64)
        heldout["hop"] = np.array(hop)
        np.savez_compressed(out / "heldout.npz", **heldout)
    result["eval_seconds"] = time.perf_counter() - started
    save_checkpoint(model, out / "model.pt")
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _worker(args) -> dict:
    run, data_dir, runs_dir, slot = args
    return execute(run, data_dir, runs_dir, position=slot)


def run_all(runs: list[Run], data_dir: str | None, runs_dir: Path, jobs: int) -> dict[str, dict]:
    """Every run's result, doing those not done yet in `jobs` processes of one thread each."""
    results, todo = {}, []
    for run in runs:
        path = runs_dir / run.name / "result.json"
        stored = json.loads(path.read_text()) if path.exists() else None
        # A result trained with other settings (epochs, width, ...) is stale: train again.
        if stored is not None and all(stored.get(k) == v for k, v in run.settings().items()):
            results[run.name] = stored
        else:
            todo.append(run)
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, (run, data_dir, runs_dir, 1 + i % jobs)) for i, run in enumerate(todo)]
            for fut in tqdm(as_completed(futures), total=len(futures), desc="runs", position=0):
                result = fut.result()
                results[result["run"]] = result
    return {run.name: results[run.name] for run in runs}
