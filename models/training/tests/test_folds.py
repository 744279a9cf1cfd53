import numpy as np
import pytest

from drsntrain.calibrate import by_load, choose
from drsntrain.folds import HEALTHY, fold_kind, run_rates, wilson


def test_wilson_interval():
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
    lo, hi = wilson(1.0, 2)  # two independent healthy windows, both right: little is known
    assert hi == 1.0 and lo < 0.35
    assert wilson(0.3, 0) == (0.0, 1.0)


def test_fold_kinds():
    assert fold_kind([1, 2], [0]) == "extrapolation"
    assert fold_kind([0, 1], [2]) == "extrapolation"
    assert fold_kind([0, 2], [1]) == "interpolation"
    assert fold_kind([1], [0, 2]) == "extrapolation"


def heldout(n_per_class: int = 4, classes: int = 3, seed: int = 0, load: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    out = {"labels": labels, "recording": labels.copy(), "load": np.full(len(labels), load), "hop": np.array(512)}
    for key in ("clean", "gaussian-8", "laplacian-8", "pink-8", "gaussian-10"):
        reps = 1 if key == "clean" else 2
        y = np.tile(labels, reps)
        logits = rng.normal(size=(len(y), classes))
        logits[np.arange(len(y)), y] += 3.0
        out[key] = logits
    return out


def test_rates_count_errors_and_independent_windows():
    h = heldout()
    h["clean"][:] = 0.0
    h["clean"][:, HEALTHY] = 1.0  # every window called healthy
    r = run_rates(h, window=1024)
    # 4 windows every 512 samples of a 1024-sample window span 2.5 windows, per recording.
    assert r["independent"] == 3 * 2.5 and r["healthy_independent"] == 2.5
    clean = r["cells"]["clean"]
    assert clean["false_alarm"] == 0.0 and clean["called_normal"] == 1.0 and clean["accuracy"] == pytest.approx(1 / 3)


def test_by_load_splits_every_cell_with_its_repeats():
    a, b = heldout(load=0), heldout(load=2, seed=1)
    both = {k: np.concatenate([a[k], b[k]]) if k != "hop" else a[k] for k in a}
    # Cells repeat the windows per realisation: rebuild them that way.
    for k in a:
        if k not in ("labels", "recording", "load", "hop") and k != "clean":
            n = len(a["labels"])
            both[k] = np.concatenate([a[k][:n], b[k][:n], a[k][n:], b[k][n:]])
    parts = by_load(both)
    assert set(parts) == {0, 2}
    assert np.array_equal(parts[2]["gaussian-8"], np.concatenate([b["gaussian-8"][:12], b["gaussian-8"][12:]]))


def test_choose_prefers_the_pair_that_holds_on_both_kinds():
    extra = [heldout(seed=s, load=load) for s, load in ((0, 0), (1, 2), (2, 0), (3, 2))]
    inter = [heldout(seed=9, load=1)]
    c = choose(extra, inter)
    assert c["chosen"] in ("extrapolation", "interpolation")
    assert set(c["per_fold"]) == {"0", "2"}, "cross-fitted by held-out load"
    for j in c["candidates"].values():
        assert j["on_extrapolation"]["windows"] == 4 * 12 * 9 and j["on_interpolation"]["windows"] == 12 * 9
