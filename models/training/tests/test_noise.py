import numpy as np
import pytest
import torch
from scipy.signal import welch
from scipy.stats import kurtosis

from drsntrain.noise import NOISE_TYPES, add_mixed_noise, add_noise, measured_snr_db, raw_noise


def signals(n=64, length=2048, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 12_000
    amp = torch.rand(n, 1, generator=gen) * 3 + 0.1
    return amp * torch.sin(2 * torch.pi * 157 * t) + 0.2 * torch.randn(n, length, generator=gen)


@pytest.mark.parametrize("kind", NOISE_TYPES)
@pytest.mark.parametrize("snr", [8.0, 0.0, -6.0, -10.0])
def test_every_window_hits_the_asked_snr(kind, snr):
    x = signals()
    noisy = add_noise(x, kind, snr, torch.Generator().manual_seed(1))
    got = measured_snr_db(x, noisy)
    assert torch.all((got - snr).abs() < 0.1), got


def test_per_row_snr():
    x = signals(n=5)
    snr = torch.tensor([-10.0, -4.0, 0.0, 3.0, 9.0])
    noisy = add_noise(x, "laplacian", snr, torch.Generator().manual_seed(2))
    assert torch.allclose(measured_snr_db(x, noisy), snr, atol=0.01)


def test_pink_noise_has_a_one_over_f_spectrum():
    n = raw_noise("pink", (32, 16384), torch.Generator().manual_seed(3)).numpy()
    f, psd = welch(n, fs=1.0, nperseg=2048, axis=-1)
    psd = psd.mean(0)
    band = (f > 0.002) & (f < 0.45)
    slope = np.polyfit(np.log10(f[band]), np.log10(psd[band]), 1)[0]
    assert abs(slope + 1.0) < 0.1, slope


def test_white_noises_are_flat_and_laplacian_is_heavy_tailed():
    gen = torch.Generator().manual_seed(4)
    for kind, excess_kurtosis in [("gaussian", 0.0), ("laplacian", 3.0)]:
        n = raw_noise(kind, (16, 16384), gen).numpy()
        f, psd = welch(n, fs=1.0, nperseg=1024, axis=-1)
        slope = np.polyfit(np.log10(f[1:]), np.log10(psd.mean(0)[1:]), 1)[0]
        assert abs(slope) < 0.05, (kind, slope)
        assert abs(kurtosis(n.ravel()) - excess_kurtosis) < 0.2, kind


def test_noise_is_reproducible_from_the_generator():
    x = signals(n=4)
    a = add_noise(x, "pink", -4.0, torch.Generator().manual_seed(9))
    b = add_noise(x, "pink", -4.0, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_mixed_noise_leaves_clean_rows_alone_and_corrupts_the_rest():
    x = signals(n=4)
    kinds = torch.tensor([-1, 0, 1, 2])
    snr = torch.tensor([0.0, -2.0, -5.0, 1.0])
    out = add_mixed_noise(x, kinds, snr, torch.Generator().manual_seed(5))
    assert torch.equal(out[0], x[0])
    assert torch.allclose(measured_snr_db(x[1:], out[1:]), snr[1:], atol=0.01)


def test_unknown_noise_type_is_refused():
    with pytest.raises(ValueError, match="unknown noise type"):
        raw_noise("brown", (1, 8), torch.Generator())
