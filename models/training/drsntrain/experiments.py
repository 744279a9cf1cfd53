"""The study: which runs make up the report, and running them in parallel processes.

A run is one (protocol, architecture, seed). Each writes `model.pt` and `result.json`
into its own folder under the runs directory; a run whose result exists is not redone,
so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from .data import load_recordings, split_windows
from .evaluate import evaluate_grid
from .export import save_checkpoint
from .model import ModelConfig
from .train import NoiseProtocol, TrainConfig, train

ARCHS = ("none", "cs", "cw")
PAPER_SNRS_DB = (-10.0, -8.0, -6.0)


@dataclass(frozen=True)
class Run:
    protocol: str  # "mixed" or "paper-gaussian-<snr>"
    model: ModelConfig
    train: TrainConfig
    noise: NoiseProtocol

    @property
    def name(self) -> str:
        return f"{self.protocol}/{self.model.shrinkage}-s{self.train.seed}"

    def settings(self) -> dict:
        """What a stored result must have been trained with to be reused for this run."""
        return {"model": self.model.to_dict(), "train": self.train.to_dict(), "noise": asdict(self.noise)}


def study_runs(
    seeds: int,
    epochs: int,
    model: ModelConfig,
    hop: int,
    paper_model: ModelConfig,
    paper_epochs: int,
    paper_seeds: int,
    batch_size: int = TrainConfig.batch_size,
) -> list[Run]:
    """The mixed-noise runs first (they decide the shipped model), then the paper protocol.

    `batch_size` applies to the mixed-noise runs; the paper-protocol runs keep the paper's recipe.
    """
    runs = []
    for seed in range(seeds):
        for arch in ARCHS:
            runs.append(
                Run(
                    "mixed",
                    replace(model, shrinkage=arch),
                    TrainConfig(epochs=epochs, seed=seed, train_hop=hop, batch_size=batch_size),
                    NoiseProtocol(),
                )
            )
    for snr in PAPER_SNRS_DB:
        for seed in range(paper_seeds):
            for arch in ARCHS:
                runs.append(
                    Run(
                        f"paper-gaussian{snr:g}dB",
                        replace(paper_model, shrinkage=arch),
                        TrainConfig(epochs=paper_epochs, seed=seed, train_hop=hop),
                        NoiseProtocol(kind="fixed", noise_type="gaussian", snr_db=snr),
                    )
                )
    return runs


def execute(run: Run, data_dir: str | None, runs_dir: Path, position: int = 0) -> dict:
    """Train and evaluate one run; write its checkpoint and result."""
    recordings = load_recordings(data_dir)
    model, log = train(recordings, run.model, run.train, run.noise, progress=run.name, position=position)
    x_test, y_test = split_windows(recordings, "test", run.model.window)
    cells = None if run.noise.kind == "mixed" else [(run.noise.noise_type, run.noise.snr_db)]
    started = time.perf_counter()
    result = {
        "run": run.name,
        "protocol": run.protocol,
        "arch": run.model.shrinkage,
        "seed": run.train.seed,
        **log,
        "test": evaluate_grid(model, x_test, y_test, cells=cells, confusion_snr=run.noise.snr_db if cells else -8.0),
    }
    result["eval_seconds"] = time.perf_counter() - started
    out = runs_dir / run.name
    out.mkdir(parents=True, exist_ok=True)
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
