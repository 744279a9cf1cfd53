"""A tiny end-to-end run of the training command on the committed CWRU excerpt."""

import json

import numpy as np
import onnx

from drsntrain.__main__ import main
from drsntrain.data import CLASSES
from drsntrain.export import ort_outputs, ort_session, sha256

from .conftest import FIXTURE_DIR, multi_load_tree


def test_tiny_training_run_exports_a_loadable_model(tmp_path, capsys):
    args = ["train", "--data-dir", str(FIXTURE_DIR), "--window", "512", "--width", "1", "--units", "1"]
    args += ["--epochs", "3", "--hop", "512", "--threads", "1", "--name", "tiny", "--out", str(tmp_path)]
    assert main(args) == 0
    card = json.loads((tmp_path / "tiny.json").read_text())
    onnx_file = tmp_path / card["onnx"]
    assert sha256(onnx_file) == card["sha256"]
    assert card["classes"] == list(CLASSES)
    assert card["input"]["window"] == 512
    assert card["parity"]["max_abs_diff"] <= 1e-4
    assert onnx.load(str(onnx_file)).ir_version <= 10
    logits, shrink = ort_outputs(ort_session(onnx_file), np.random.default_rng(0).normal(size=(3, 512)))
    assert logits.shape == (3, len(CLASSES)) and shrink.shape == (3, 3)
    assert set(card["evaluation"]["accuracy"]) == {"clean", "gaussian", "laplacian", "pink"}
    assert json.loads(capsys.readouterr().out)["onnx"] == "tiny.onnx"


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path)]) == 2
    assert "CWRU data not found" in capsys.readouterr().err


def test_tiny_study_writes_the_report_and_resumes(tmp_path):
    runs = tmp_path / "runs"
    data = multi_load_tree(tmp_path / "data")
    args = ["reproduce", "--data-dir", str(data), "--window", "512", "--width", "1", "--units", "1", "--stages", "2"]
    args += ["--stem-kernel", "16", "--stem-stride", "4", "--epochs", "2", "--hop", "1024", "--seeds", "2"]
    args += ["--archs", "cw,none"]  # the default is DRSN-CW alone; the report compares it with the ResNet
    args += ["--jobs", "2", "--out", str(tmp_path), "--runs-dir", str(runs), "--batch", "32"]
    assert main(args) == 0
    report = (tmp_path / "reports" / "README.md").read_text()
    for heading in (
        "## What stands behind every figure",
        "## 2.1.0's recipe against 2.0.0's",
        "## What costs a plant most",
        "## Targets: leave one load out",
        "DRSN-CW against ResNet",
        "## Time split",
        "## Calibration that holds out of range",
        "## Out of distribution",
        "## Cost",
        "## Noise score",
        "## Claims of earlier reports, corrected",
    ):
        assert heading in report, heading
    for png in ("accuracy_vs_snr.png", "confusion_-8dB.png", "shrinkage_vs_snr.png"):
        assert (tmp_path / "reports" / png).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "reports" / "results.json").read_text())
    # Leave one load out: 3 folds x 2 seeds x 2 architectures; the time split: 2 seeds x 2 architectures; model
    # 2.0.0's recipe on the same folds, and both recipes trained on one load alone: 3 x 2 each (DRSN-CW).
    assert len(results["runs"]) == 3 * 2 * 2 + 2 * 2 + 3 * 3 * 2
    assert {"recipe-cw", "recipe-none", "recipe-cw-ood", "shipped-1.1.0", "paper"} == set(results["bench"])
    for r in results["runs"].values():
        assert r["model"]["stem_kernel"] == 16 and r["train"]["batch_size"] == 32
        if r["protocol"].startswith("lolo"):
            assert r["test_loads"] == [int(r["protocol"][5])]
            assert sorted(r["train_loads"] + r["test_loads"]) == [0, 1, 2]
        if r["protocol"].startswith("only"):
            assert r["train_loads"] == [int(r["protocol"][5])] and len(r["test_loads"]) == 2
        base = r["run"].startswith("base-")
        assert (r["recipe"] == "2.0.0") == base and (r["train"]["speed_method"] == "linear") == base
    kinds = {p: f["kind"] for p, f in results["folds"]["study"]["cw"].items()}
    assert kinds == {
        "lolo-0hp": "extrapolation",
        "lolo-1hp": "interpolation",
        "lolo-2hp": "extrapolation",
        "only-0hp": "extrapolation",
        "only-1hp": "extrapolation",
        "only-2hp": "extrapolation",
    }
    for f in results["folds"]["study"]["cw"].values():
        acc = f["cells"]["clean"]["accuracy"]
        assert acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1] and f["independent"] < f["windows"]
    assert results["decision"]["decided"] and set(results["ood"]["folds"]) == {
        r for r in results["runs"] if not r.startswith(("base-", "mixed")) and "/cw-" in r
    }
    card = json.loads((tmp_path / "drsn_cw_cwru.json").read_text())
    cw = [r for r in results["runs"].values() if r["protocol"] == "mixed" and r["arch"] == "cw"]
    best = max(cw, key=lambda r: (r["best_val_acc"], -r["seed"]))
    assert card["training"]["seed"] == best["seed"]  # chosen on validation, never on test
    assert card["operating_conditions"]["loads_hp"] == [0, 1, 2]
    assert card["calibration"]["temperature"] > 0 and 0 <= card["calibration"]["uncertain_below"] <= 1
    assert set(card["evaluation"]["held_out_loads"]["folds"]) == set(kinds)
    assert set(card["input_range"]) >= {"rms_accepted", "peak_accepted", "clip_samples", "crest_accepted", "unit"}
    # The out-of-distribution score is a third output of the graph, with its threshold in the card.
    assert card["outputs"]["ood_score"] == "ood_score" and card["ood"]["uncertain_above"] > 0
    windows = np.random.default_rng(0).normal(size=(3, 512))
    logits, _, score = ort_outputs(ort_session(tmp_path / card["onnx"]), windows)
    assert logits.shape == (3, len(CLASSES)) and score.shape == (3,) and (score >= 0).all()

    # A second invocation reuses every finished run instead of training again.
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("result.json")}
    assert main(args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in runs.rglob("result.json")}

    # Other settings make the stored results stale: --epochs retrains them.
    assert main([*args[: args.index("--epochs") + 1], "3", *args[args.index("--epochs") + 2 :]]) == 0
    assert all(p.stat().st_mtime_ns != t for p, t in stamps.items())
    assert json.loads((runs / "mixed" / "cw-s0" / "result.json").read_text())["train"]["epochs"] == 3
