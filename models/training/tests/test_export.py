"""The shipped model: card, sha256, ONNX format, parity with PyTorch and the golden file."""

import json

import jsonschema
import numpy as np
import onnx
import pytest
import torch

from drsntrain.data import CLASSES, load_recordings, split_windows
from drsntrain.export import check_card, load_checkpoint, ort_outputs, ort_session, sha256

from .conftest import MODELS


@pytest.fixture(scope="module")
def onnx_path(card):
    return MODELS / card["onnx"]


@pytest.fixture(scope="module")
def torch_model(card):
    return load_checkpoint(MODELS / card["onnx"].replace(".onnx", ".pt"))


@pytest.fixture(scope="module")
def golden(card):
    return dict(np.load(MODELS / card["golden"]))


def test_card_sha256_matches_the_file(card, onnx_path):
    assert sha256(onnx_path) == card["sha256"]


def test_card_describes_the_model(card, torch_model):
    assert card["classes"] == list(CLASSES)
    assert card["input"] == card["input"] | {
        "channels": 1,
        "window": torch_model.config.window,
        "sample_rate_hz": 12000,
    }
    assert card["outputs"] == {"logits": "logits", "shrinkage": "shrinkage", "ood_score": "ood_score"}
    assert card["ood"]["uncertain_above"] > 0
    assert card["architecture"]["type"] == "DRSN-CW"
    assert card["normalization"] == "none"
    assert 0 < card["default_hop"] <= card["input"]["window"]
    assert card["evaluation"]["accuracy"]["clean"] >= 0.995
    for key in ("name", "version", "training"):
        assert card[key]
    assert card["shrinkage_units"] == torch_model.config.units


def test_onnx_format(card, onnx_path):
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    assert proto.ir_version <= 10
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    (inp,) = proto.graph.input
    assert inp.name == card["input"]["name"]
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [1, card["input"]["window"]]
    assert [o.name for o in proto.graph.output] == ["logits", "shrinkage", "ood_score"]
    # The soft threshold must not be exported as a fixed-threshold Shrink or a tensor Clip.
    ops = {n.op_type for n in proto.graph.node}
    assert "Shrink" not in ops and "Clip" not in ops


def ood_score(onnx_path, features: np.ndarray) -> np.ndarray:
    """The out-of-distribution score from the statistics the graph carries (the checkpoint is the network alone):
    squared distance to the nearest whitened class mean."""
    init = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    # The exporter folds the class means' unsqueeze into a (1, classes, features) constant.
    (means,) = [v for v in init.values() if v.ndim == 3 and v.shape[:2] == (1, len(CLASSES))]
    white = (features @ init["whiten"])[:, None, :] - means
    return (white**2).sum(-1).min(1)


def torch_outputs(model, windows, onnx_path):
    with torch.no_grad():
        features, shrink = model.embed(torch.from_numpy(windows).unsqueeze(1))
        logits = model.fc(features)
    return logits.numpy(), shrink.numpy(), ood_score(onnx_path, features.numpy())


def close(got, want) -> bool:
    """logits and shrinkage to 1e-4; the ood score (a squared distance of some hundreds) to 1e-4 of its size."""
    return all(
        np.abs(g - w).max() <= 1e-4 * (np.maximum(1.0, np.abs(w)).max() if k == 2 else 1.0)
        for k, (g, w) in enumerate(zip(got, want, strict=True))
    )


@pytest.mark.parametrize("batch", [1, 5, 30])
def test_onnx_matches_pytorch_on_real_test_windows(golden, onnx_path, torch_model, batch):
    session = ort_session(onnx_path)
    windows = golden["windows"][:batch]
    got = ort_outputs(session, windows)
    want = torch_outputs(torch_model, windows, onnx_path)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert close(got, want)
    assert (got[0].argmax(1) == want[0].argmax(1)).all()


def test_golden_file_is_what_onnx_runtime_gives(golden, onnx_path, torch_model):
    assert golden["windows"].dtype == np.float32 and golden["windows"].shape[1] == torch_model.config.window
    logits, shrink, score = ort_outputs(ort_session(onnx_path), golden["windows"])
    assert np.abs(logits - golden["logits"]).max() <= 1e-5
    assert np.abs(shrink - golden["shrinkage"]).max() <= 1e-5
    assert np.allclose(score, golden["ood_score"], rtol=1e-5)
    assert shrink.shape[1] == torch_model.config.units
    clean = np.isnan(golden["snr_db"])
    assert set(golden["labels"][clean]) == set(range(len(CLASSES)))
    assert (logits[clean].argmax(1) == golden["labels"][clean]).mean() >= 0.95


def test_onnx_matches_pytorch_on_the_full_test_split(cwru_dir, onnx_path, torch_model):
    x, y = split_windows(load_recordings(cwru_dir), "test", torch_model.config.window)
    got = ort_outputs(ort_session(onnx_path), x)
    want = torch_outputs(torch_model, x, onnx_path)
    assert close(got, want)
    assert (got[0].argmax(1) == want[0].argmax(1)).all()
    assert (got[0].argmax(1) == y).mean() >= 0.995


def test_the_shipped_card_matches_the_schema_and_broken_cards_do_not():
    shipped = json.loads((MODELS / "drsn_cw_cwru.json").read_text())
    check_card(shipped)
    broken = [
        {k: v for k, v in shipped.items() if k != "classes"},
        {**shipped, "classes": []},
        {**shipped, "calibration": {"temperature": 0.0}},
        {**shipped, "input_range": {**shipped["input_range"], "clip_samples": 1}},
        {**shipped, "outputs": {"logits": "logits"}},  # a threshold with no score to compare
        {**shipped, "normalization": "minmax"},
    ]
    for card in broken:
        with pytest.raises(jsonschema.ValidationError):
            check_card(card)
