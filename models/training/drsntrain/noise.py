"""Additive noise at an exact per-window signal-to-noise ratio.

SNR is 10*log10(P_signal / P_noise) with P the mean square of the window. Each noise
realisation is rescaled so that every window hits the asked SNR exactly, not just on
average. Pink noise has a 1/f power spectrum (slope -1 on a log-log PSD).
"""

from __future__ import annotations

import numpy as np
import torch

NOISE_TYPES: tuple[str, ...] = ("gaussian", "laplacian", "pink")


def raw_noise(kind: str, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Zero-mean noise of the given kind, shape (n, length), arbitrary scale."""
    _, length = shape
    if kind == "gaussian":
        return torch.randn(shape, generator=generator)
    if kind == "laplacian":
        # The difference of two unit exponentials is Laplace(0, 1).
        a = torch.empty(shape).exponential_(generator=generator)
        b = torch.empty(shape).exponential_(generator=generator)
        return a - b
    if kind == "pink":
        white = torch.randn(shape, generator=generator)
        spectrum = torch.fft.rfft(white, dim=-1)
        f = torch.fft.rfftfreq(length)
        gain = torch.zeros_like(f)
        gain[1:] = f[1:].rsqrt()  # amplitude ~ f^-1/2, so power ~ 1/f
        return torch.fft.irfft(spectrum * gain, n=length, dim=-1)
    raise ValueError(f"unknown noise type {kind!r}; expected one of {NOISE_TYPES}")


def scale_to_snr(signal: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Rescale each row of noise so that signal/noise power is exactly snr_db."""
    p_signal = signal.pow(2).mean(dim=-1, keepdim=True)
    p_noise = noise.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-30)
    target = p_signal / torch.pow(10.0, snr_db.reshape(-1, 1) / 10.0)
    return noise * torch.sqrt(target / p_noise)


def add_noise(
    signal: torch.Tensor, kind: str, snr_db: float | torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """signal (n, length) plus one noise kind at snr_db (a number or one per row)."""
    snr = torch.as_tensor(snr_db, dtype=signal.dtype).expand(signal.shape[0])
    noise = raw_noise(kind, tuple(signal.shape), generator)
    return signal + scale_to_snr(signal, noise, snr)


def add_mixed_noise(
    signal: torch.Tensor,
    kinds: torch.Tensor,
    snr_db: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-row noise: kinds holds indices into NOISE_TYPES, or -1 for no noise."""
    out = signal.clone()
    for i, kind in enumerate(NOISE_TYPES):
        rows = (kinds == i).nonzero(as_tuple=True)[0]
        if len(rows):
            out[rows] = add_noise(signal[rows], kind, snr_db[rows], generator)
    return out


def measured_snr_db(signal: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Per-row SNR of noisy against the clean signal."""
    noise = noisy - signal
    return 10 * torch.log10(signal.pow(2).mean(-1) / noise.pow(2).mean(-1))


def noisy_copies(
    x: np.ndarray, noise_type: str | None, snr_db: float | None, seed: int, repeats: int = 1
) -> np.ndarray:
    """repeats noisy copies of x (stacked), reproducible from seed; clean if noise_type is None."""
    clean = torch.as_tensor(x, dtype=torch.float32)
    if noise_type is None:
        return clean.repeat(repeats, 1).numpy()
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([add_noise(clean, noise_type, snr_db, gen) for _ in range(repeats)]).numpy()
