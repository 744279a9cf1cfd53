"""A tiny end-to-end run of the training command on the committed CWRU excerpt."""

import json

import numpy as np
import onnx

from drsntrain.__main__ import main
from drsntrain.data import CLASSES
from drsntrain.export import ort_outputs, ort_session, sha256

from .conftest import FIXTURE_DIR


def test_tiny_training_run_exports_a_loadable_model(tmp_path, capsys):
    args = ["train", "--data-dir", str(FIXTURE_DIR), "--window", "512", "--width", "1", "--units", "1"]
    args += ["--epochs", "3", "--hop", "128", "--threads", "1", "--name", "tiny", "--out", str(tmp_path)]
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
    args = ["reproduce", "--data-dir", str(FIXTURE_DIR), "--window", "512", "--width", "1", "--units", "1"]
    args += ["--epochs", "2", "--hop", "256", "--seeds", "2", "--paper-epochs", "1", "--paper-seeds", "1"]
    args += ["--jobs", "2", "--out", str(tmp_path), "--runs-dir", str(runs), "--stages", "2", "--batch", "32"]
    assert main(args) == 0
    report = (tmp_path / "reports" / "README.md").read_text()
    for heading in ("## Targets", "## Accuracy", "DRSN-CW against ResNet", "paper's protocol", "## Noise score"):
        assert heading in report
    for png in ("accuracy_vs_snr.png", "confusion_-8dB.png", "shrinkage_vs_snr.png"):
        assert (tmp_path / "reports" / png).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert len(results["runs"]) == 2 * 3 + 3 * 3
    assert set(results["bench"]) == {"none", "cs", "cw"}
    # --stages and --batch shape the mixed-noise runs; the paper-protocol runs keep the paper's network and batch.
    for r in results["runs"].values():
        mixed = r["protocol"] == "mixed"
        assert [c for c, _ in r["model"]["stages"]] == ([4, 8] if mixed else [4, 8, 16])
        assert r["train"]["batch_size"] == (32 if mixed else 128)
    card = json.loads((tmp_path / "drsn_cw_cwru.json").read_text())
    cw = [r for r in results["runs"].values() if r["protocol"] == "mixed" and r["arch"] == "cw"]
    best = max(cw, key=lambda r: (r["best_val_acc"], -r["seed"]))
    assert card["training"]["seed"] == best["seed"]  # chosen on validation, never on test

    # A second invocation reuses every finished run instead of training again.
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("result.json")}
    assert main(args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in runs.rglob("result.json")}

    # Other settings make the stored results stale: --epochs retrains the mixed-noise runs alone
    # (the paper-protocol runs have their own --paper-epochs).
    assert main([*args[: args.index("--epochs") + 1], "3", *args[args.index("--epochs") + 2 :]]) == 0
    for p, t in stamps.items():
        retrained = p.stat().st_mtime_ns != t
        assert retrained == (p.parent.parent.name == "mixed"), p
    assert json.loads((runs / "mixed" / "cw-s0" / "result.json").read_text())["train"]["epochs"] == 3
