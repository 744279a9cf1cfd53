import numpy as np

from drsntrain.calibrate import calibrate, ece, fit_temperature, softmax, threshold


def overconfident(n: int, seed: int, temperature: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated 4-class model, multiplied by `temperature` (so it is overconfident by that much)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    true = rng.normal(size=(n, 4))
    true[np.arange(n), labels] += 1.5
    # Sample labels from the calibrated probabilities, so the calibrated model is exactly right on average.
    p = softmax(true)
    labels = np.array([rng.choice(4, p=row) for row in p])
    return true * temperature, labels


def test_temperature_scaling_recovers_the_overconfidence():
    logits, labels = overconfident(20_000, 0)
    t = fit_temperature(logits, labels)
    assert abs(t - 3.0) < 0.2
    assert ece(softmax(logits, t), labels) < 0.02 < ece(softmax(logits), labels)


def test_threshold_gives_the_asked_precision_above_it():
    logits, labels = overconfident(20_000, 1, temperature=1.0)
    p = softmax(logits)
    c = threshold(p, labels, precision=0.9)
    sure = p.max(1) >= c
    assert (p.argmax(1)[sure] == labels[sure]).mean() >= 0.9
    assert 0 < sure.mean() < 1
    # A target no window reaches leaves every window uncertain.
    assert threshold(np.full((4, 2), 0.5), np.array([0, 1, 0, 1]), precision=0.99) == 1.0


def test_calibrate_cross_fits_each_fold_on_the_others():
    runs = {}
    for fold in range(3):
        logits, labels = overconfident(1500, 10 + fold)
        logits = np.concatenate([logits, logits * 0.9])
        # Two cells of the same windows (a noise cell holds the same windows as the clean one, noisy).
        runs[fold] = [{"labels": labels[:1500], "clean": logits[:1500], "gaussian-8": logits[1500:]}]
    c = calibrate(runs)
    assert set(c["per_fold"]) == {"0", "1", "2"}
    assert abs(c["temperature"] - 3.0) < 0.3
    for f in c["per_fold"].values():
        assert f["ece_after"] < f["ece_before"]
    assert c["windows"] == 9000
