"""Train/serve parity: a training window must look, spectrally, like a window the server cuts from the same
recording. Model 2.0.0 trained on linearly interpolated windows (a low-pass the served windows lack) and leaned on
that fingerprint; these tests fail when any training-path augmentation moves band energies beyond the tolerance."""

import itertools

import numpy as np
import pytest
import torch

from drsntrain.data import RandomWindows, contiguous_windows, load_recordings
from drsntrain.train import NoiseProtocol

from .conftest import FIXTURE_DIR

WINDOW = 2048
# 1 kHz bands up to 5 kHz (above it the band-limited resampler's anti-aliasing roll-off and the speed shift itself
# move a band's edge), energy as a share of the 0-5 kHz total, in dB, averaged over the recordings.
EDGES_HZ = np.arange(0, 5001, 1000)
TOLERANCE_DB = 0.5
WHOLE = {"train": (0.0, 1.0), "val": (1.0, 1.0), "test": (1.0, 1.0)}


def band_db(windows: np.ndarray) -> np.ndarray:
    spectrum = (np.abs(np.fft.rfft(windows * np.hanning(windows.shape[1]), axis=1)) ** 2).mean(0)
    freq = np.fft.rfftfreq(windows.shape[1], 1 / 12_000)
    energy = np.array([spectrum[(freq >= lo) & (freq < hi)].sum() for lo, hi in itertools.pairwise(EDGES_HZ)])
    return 10 * np.log10(energy / energy.sum())


@pytest.fixture(scope="module")
def faults():
    return [r for r in load_recordings(FIXTURE_DIR) if r.label != "normal"]


def band_shift(recordings, **draw) -> np.ndarray:
    """Mean over recordings of (training-path band energy - served band energy), dB per band."""
    shifts = []
    for rec in recordings:
        x, _ = RandomWindows([rec], WINDOW, 64, fractions=WHOLE, **draw).draw(np.random.default_rng(0))
        shifts.append(band_db(x) - band_db(contiguous_windows(rec.signal, WINDOW)))
    return np.mean(shifts, axis=0)


def test_speed_perturbed_training_windows_have_the_served_band_energies(faults):
    # The recipe: band-limited speed changes of up to 4% on half the windows; and with every window changed.
    for raw_share in (0.5, 0.0):
        shift = band_shift(faults, speed=0.04, method="polyphase", raw_share=raw_share)
        assert np.abs(shift).max() <= TOLERANCE_DB, f"raw share {raw_share}: band shifts {shift.round(2)} dB"


def test_linear_interpolation_is_caught(faults):
    # Model 2.0.0's augmentation: the test must see its low-pass (more energy low, less high).
    shift = band_shift(faults, speed=0.04, method="linear", raw_share=0.0)
    assert shift[0] > 1.0 and shift[-1] < -1.0, shift.round(2)
    assert np.abs(shift).max() > TOLERANCE_DB


def test_unresampled_windows_are_the_recording_bit_for_bit(faults):
    rec = faults[0]
    x, _ = RandomWindows([rec], WINDOW, 256, speed=0.04, fractions=WHOLE, raw_share=0.5).draw(np.random.default_rng(1))
    exact = sum(any(np.array_equal(w, rec.signal[s : s + WINDOW]) for s in offsets(rec.signal, w)) for w in x)
    assert 0.3 * len(x) <= exact <= 0.7 * len(x), f"{exact} of {len(x)} windows left as recorded"


def offsets(signal: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Where in signal a slice equal to window could start (its first sample matches)."""
    return np.flatnonzero(signal[: len(signal) - len(window) + 1] == window[0])


def test_noise_augmentation_adds_noise_and_nothing_else():
    # The other augmentation: additive noise on the raw window. A window drawn clean is passed through untouched
    # (no filtering, scaling or shift the server would not do), and a noisy one is the window plus zero-mean noise.
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(4000, 256)).astype(np.float32))
    out = NoiseProtocol().corrupt(x, torch.Generator().manual_seed(3))
    same = (out == x).all(dim=1)
    assert 0.07 < same.float().mean() < 0.13, "about clean_prob of the windows stay clean"
    assert torch.equal(out[same], x[same])
    assert abs(float((out - x)[~same].mean())) < 0.01
