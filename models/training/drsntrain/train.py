"""Training: one architecture, one seed, one noise protocol, the paper's recipe.

Recipe (Zhao et al. 2020): SGD with momentum 0.9, learning rate 0.1 divided by 10 at
40% and 80% of training, batch 128, L2 1e-4, He initialisation. Noise is added on the
fly to every batch, so each epoch sees fresh noise. The checkpoint kept is the one with
the best validation accuracy over the last 20% of epochs (after the final LR drop).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data import RandomWindows, Recording, split_fractions, split_windows
from .model import DRSN, ModelConfig
from .noise import NOISE_TYPES, add_mixed_noise, add_noise, noisy_copies


@dataclass(frozen=True)
class NoiseProtocol:
    """How training windows are corrupted.

    mixed: per window, clean with probability clean_prob, else a random noise type at
    an SNR drawn uniformly from [snr_low, snr_high] dB. fixed: every window gets
    noise_type at exactly snr_db (the paper's protocol).
    """

    kind: str = "mixed"
    clean_prob: float = 0.1
    snr_low: float = -12.0
    snr_high: float = 8.0
    noise_type: str = "gaussian"
    snr_db: float = 0.0

    def corrupt(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        if self.kind == "fixed":
            return add_noise(x, self.noise_type, self.snr_db, gen)
        kinds = torch.randint(len(NOISE_TYPES), (n,), generator=gen)
        kinds[torch.rand(n, generator=gen) < self.clean_prob] = -1
        snr = self.snr_low + (self.snr_high - self.snr_low) * torch.rand(n, generator=gen)
        return add_mixed_noise(x, kinds, snr, gen)

    def validation_cells(self) -> list[tuple[str | None, float | None]]:
        """(noise type, SNR) cells on which checkpoints are compared."""
        if self.kind == "fixed":
            return [(self.noise_type, self.snr_db)]
        return [(None, None)] + [(t, s) for t in NOISE_TYPES for s in (-10.0, -6.0, 0.0)]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, float] = (0.4, 0.8)
    train_hop: int = 512
    # Random speed change of each training window, +-fraction (0: none); see data.RandomWindows.
    speed_perturb: float = 0.0
    # How windows change speed ("polyphase": band-limited; "linear": model 2.0.0's interpolation) and the share of
    # windows left as they were recorded, as the server sees them.
    speed_method: str = "polyphase"
    raw_share: float = 0.5
    # Draw as many windows of the healthy baseline per epoch as of the largest fault class.
    balance: bool = True
    # Train on the healthy baseline's fan-end channel as well (data.load_recordings).
    extra_healthy: bool = True
    # Fraction of each recording trained on (the next 0.2 validates); see data.split_fractions.
    train_fraction: float = 0.6
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def seed_everything(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    torch.manual_seed(seed)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, batch: int = 512) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, shrinkage or None) for windows x of shape (n, length)."""
    model.eval()
    x = torch.as_tensor(x, dtype=torch.float32)
    logits, shrink = [], []
    for i in range(0, len(x), batch):
        lo, sh = model(x[i : i + batch].unsqueeze(1))
        logits.append(lo)
        if sh is not None:
            shrink.append(sh)
    return torch.cat(logits).numpy(), (torch.cat(shrink).numpy() if shrink else None)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    logits, _ = predict(model, x)
    return float((logits.argmax(1) == y).mean())


def train(
    recordings: list[Recording],
    model_config: ModelConfig,
    config: TrainConfig,
    protocol: NoiseProtocol,
    progress: str | None = None,
    position: int = 0,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> tuple[DRSN, dict]:
    """Train one model; returns it (best validation checkpoint) and a training log. `initial_state`: weights to start
    from (fine-tuning, see manifest.initial_state); the final classifier layer (`fc.*`) may be left out of it, and
    then keeps its fresh initialisation."""
    torch.set_num_threads(config.threads)
    rng, gen = seed_everything(config.seed)
    model = DRSN(model_config)
    if initial_state is not None:
        missing, unexpected = model.load_state_dict(initial_state, strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise ValueError(f"initial weights do not fit the network: missing {missing}, unexpected {unexpected}")
    opt = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps = [max(1, round(m * config.epochs)) for m in config.milestones]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=0.1)
    fractions = split_fractions(config.train_fraction)
    windows = RandomWindows(
        recordings,
        model_config.window,
        config.train_hop,
        speed=config.speed_perturb,
        fractions=fractions,
        method=config.speed_method,
        raw_share=config.raw_share,
        balance=config.balance,
    )

    xv, yv = split_windows(recordings, "val", model_config.window, fractions)
    cells = protocol.validation_cells()
    val_x = np.concatenate([noisy_copies(xv, t, s, seed=10_000 + i) for i, (t, s) in enumerate(cells)])
    val_y = np.tile(yv, len(cells))
    select_from = min(steps[-1], config.epochs - 1)

    best_acc, best_state, best_epoch = -1.0, None, -1
    history = []
    started = time.perf_counter()
    bar = tqdm(range(config.epochs), desc=progress, position=position, leave=False, disable=progress is None)
    for epoch in bar:
        model.train()
        x, y = windows.draw(rng)
        order = rng.permutation(len(x))
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = protocol.corrupt(torch.from_numpy(x[idx]), gen).unsqueeze(1)
            yb = torch.from_numpy(y[idx])
            logits, _ = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        sched.step()
        entry = {"epoch": epoch, "loss": loss_sum / total, "train_acc": correct / total}
        if epoch >= select_from:
            entry["val_acc"] = accuracy(model, val_x, val_y)
            if entry["val_acc"] >= best_acc:
                best_acc, best_epoch = entry["val_acc"], epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        history.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", val=f"{entry.get('val_acc', float('nan')):.3f}")
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    log = {
        "model": model_config.to_dict(),
        "train": config.to_dict(),
        "noise": asdict(protocol),
        "train_windows_per_epoch": len(windows),
        "val_windows": len(val_y),
        "best_epoch": best_epoch,
        "best_val_acc": best_acc,
        "train_seconds": time.perf_counter() - started,
        "history": history,
    }
    return model, log
