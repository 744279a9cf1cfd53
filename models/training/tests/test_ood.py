import numpy as np
import pytest
import torch

from drsntrain.export import export_onnx, ort_outputs, ort_session
from drsntrain.model import DRSN, ModelConfig
from drsntrain.ood import OodStats, WithOod, auroc, scores


def test_auroc_is_the_chance_an_outside_score_is_higher():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5  # ties count half
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(loc=1.0, size=2000)
    # Two unit normals one apart: P(b > a) = Phi(1 / sqrt 2) = 0.760.
    assert auroc(a, b) == pytest.approx(0.760, abs=0.015)


def test_mahalanobis_is_the_distance_to_the_nearest_class():
    stats = OodStats(np.array([[0.0, 0.0], [10.0, 0.0]], np.float32), np.diag([1.0, 4.0]).astype(np.float32))
    f = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 1.0], [5.0, 0.5]], np.float32)
    assert np.allclose(stats.score(f), [0.0, 1.0, 4.0, 25.0 + 1.0])


def test_scores_rise_away_from_training():
    stats = OodStats(np.zeros((3, 2), np.float32), np.eye(2, dtype=np.float32))
    logits = np.array([[9.0, 0.0, 0.0], [0.3, 0.2, 0.1]])
    s = scores(stats, np.array([[0.1, 0.0], [5.0, 5.0]], np.float32), logits)
    for name in ("mahalanobis", "energy", "max_softmax"):
        assert s[name][1] > s[name][0], name


def test_the_exported_ood_score_is_the_numpy_score(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(window=256, stem_channels=4, stages=((4, 1), (8, 1)), stem_kernel=8, stem_stride=4)
    model = DRSN(cfg).eval()
    rng = np.random.default_rng(1)
    stats = OodStats(rng.normal(size=(cfg.classes, 8)).astype(np.float32), np.eye(8, dtype=np.float32) * 2)
    export_onnx(model, tmp_path / "m.onnx", ood=WithOod(model, stats))
    x = rng.normal(size=(5, 256)).astype(np.float32)
    logits, shrinkage, score = ort_outputs(ort_session(tmp_path / "m.onnx"), x)
    with torch.no_grad():
        features, _ = model.embed(torch.from_numpy(x).unsqueeze(1))
    assert logits.shape == (5, cfg.classes) and shrinkage.shape == (5, cfg.units)
    assert np.allclose(score, stats.score(features.numpy()), rtol=1e-4, atol=1e-3)
