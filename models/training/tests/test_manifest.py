"""Training on a plant's own recordings: the manifest, its readers and refusals, the leave-one-group-out folds,
fine-tuning and the model-repository version written, on a tiny synthetic data set made here (3 classes of tones and
noise, 3 groups at slightly different gains and speeds, every file format)."""

import json
import struct
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import scipy.io
import scipy.io.wavfile
import torch

from drsntrain.__main__ import main
from drsntrain.export import CARD_SCHEMA, load_checkpoint, ort_outputs, ort_session, sha256
from drsntrain.manifest import (
    ManifestError,
    check_protocol,
    leave_one_group_out,
    load_signals,
    order_classes,
    read_manifest,
)
from drsntrain.plant import Options, fine_tune_start
from drsntrain.train import NoiseProtocol, TrainConfig, train

from .conftest import MODELS

RATE = 4000  # the model's rate in these tests
WINDOW = 256
SECONDS = 2.0
TONES = {"normal": 60.0, "inner": 410.0, "outer": 730.0}  # Hz, at group speed 1
GROUPS = {"line-a": (1.0, 1.0), "line-b": (1.5, 1.03), "line-c": (0.7, 0.97)}  # (gain, speed)
HEADER = "path,label,group,sample_rate_hz,channel"


def tone(label: str, group: str, rate: float, seed: int) -> np.ndarray:
    """A class's tone (and its second harmonic) at the group's gain and speed, with noise."""
    gain, speed = GROUPS[group]
    t = np.arange(int(SECONDS * rate)) / rate
    f = TONES[label] * speed
    rng = np.random.default_rng(seed)
    x = np.sin(2 * np.pi * f * t) + 0.4 * np.sin(2 * np.pi * 2 * f * t + 1.0) + 0.3 * rng.normal(size=len(t))
    return (0.25 * gain * x).astype(np.float64)


def write_wav24(path: Path, rate: int, data: np.ndarray) -> None:
    """24-bit PCM (scipy writes 16- and 32-bit only); data in [-1, 1), shape (n,) or (n, channels)."""
    data = data.reshape(len(data), -1)
    ints = np.clip(np.round(data * 2**23), -(2**23), 2**23 - 1).astype("<i4")
    body = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints.reshape(-1))
    channels = data.shape[1]
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * 3 * channels, 3 * channels, 24)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + b"fmt " + fmt + b"data")
    with path.open("ab") as f:
        f.write(struct.pack("<I", len(body)) + body)


def write_dataset(root: Path) -> dict[str, np.ndarray]:
    """Every reader and channel choice: returns the expected signal of each file at its own rate."""
    for g in GROUPS:
        (root / g).mkdir(parents=True)
    s = {}
    # line-a: 16-bit WAV at 8 kHz (resampled), a CSV with a header (column by name), a 2-D .npy (column 1).
    s["line-a/normal.wav"] = tone("normal", "line-a", 8000, 1)
    scipy.io.wavfile.write(root / "line-a/normal.wav", 8000, np.round(s["line-a/normal.wav"] * 32767).astype("<i2"))
    s["line-a/inner.csv"] = tone("inner", "line-a", RATE, 2)
    t = np.arange(len(s["line-a/inner.csv"])) / RATE
    rows = "\n".join(f"{a:.6f},{b:.9f}" for a, b in zip(t, s["line-a/inner.csv"], strict=True))
    (root / "line-a/inner.csv").write_text("time_s,accel_g\n" + rows + "\n")
    s["line-a/outer.npy"] = tone("outer", "line-a", RATE, 3)
    np.save(root / "line-a/outer.npy", np.stack([np.zeros_like(s["line-a/outer.npy"]), s["line-a/outer.npy"]], 1))
    # line-b: a CWRU-style .mat at 12 kHz (default *_DE_time), 24-bit stereo WAV (channel 1), float WAV.
    s["line-b/normal.mat"] = tone("normal", "line-b", 12000, 4)
    scipy.io.savemat(
        root / "line-b/normal.mat",
        {"X097_DE_time": s["line-b/normal.mat"][:, None], "X097_FE_time": np.zeros((10, 1)), "X097RPM": 1797},
    )
    s["line-b/inner.wav"] = tone("inner", "line-b", RATE, 5)
    write_wav24(
        root / "line-b/inner.wav", RATE, np.stack([np.zeros(len(s["line-b/inner.wav"])), s["line-b/inner.wav"]], 1)
    )
    s["line-b/outer.wav"] = tone("outer", "line-b", RATE, 6)
    scipy.io.wavfile.write(root / "line-b/outer.wav", RATE, s["line-b/outer.wav"].astype(np.float32))
    # line-c: a 1-D .npy and a .mat variable by name, a headerless CSV; no outer race fault.
    s["line-c/normal.npy"] = tone("normal", "line-c", RATE, 7)
    np.save(root / "line-c/normal.npy", s["line-c/normal.npy"].astype(np.float32))
    s["line-c/inner.mat"] = tone("inner", "line-c", RATE, 8)
    scipy.io.savemat(root / "line-c/inner.mat", {"vib": s["line-c/inner.mat"][None, :], "other": np.ones(3)})
    s["line-c/inner2.csv"] = tone("inner", "line-c", RATE, 9)
    np.savetxt(root / "line-c/inner2.csv", s["line-c/inner2.csv"])
    return s


ROWS = [
    "line-a/normal.wav,normal,line-a,8000,",
    "line-a/inner.csv,inner,line-a,4000,accel_g",
    "line-a/outer.npy,outer,line-a,4000,1",
    "line-b/normal.mat,normal,line-b,12000,",
    "line-b/inner.wav,inner,line-b,4000,1",
    "line-b/outer.wav,outer,line-b,4000,",
    "line-c/normal.npy,normal,line-c,4000,",
    "line-c/inner.mat,inner,line-c,4000,vib",
    "line-c/inner2.csv,inner,line-c,4000,",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("plant")
    signals = write_dataset(root)
    (root / "manifest.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    return root, signals


def dominant_hz(x: np.ndarray, rate: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def test_the_manifest_reads_every_format_at_the_model_rate(dataset):
    root, signals = dataset
    manifest = read_manifest(root / "manifest.csv")
    assert manifest.classes == ("normal", "inner", "outer")
    assert manifest.groups == ("line-a", "line-b", "line-c")
    assert [r.line for r in manifest.rows] == list(range(2, 2 + len(ROWS)))
    recordings = load_signals(manifest, RATE, WINDOW)
    for rec in recordings:
        want = signals[rec.row.name]
        assert rec.signal.dtype == np.float32 and rec.class_index == manifest.classes.index(rec.label)
        assert abs(len(rec.signal) - SECONDS * RATE) <= 1, rec.row.name
        if rec.row.sample_rate_hz == RATE:  # read as written: the right column, channel or variable, full scale
            assert np.allclose(rec.signal, want, atol=2e-5), rec.row.name
        else:  # resampled, band-limited: the same tone
            _, speed = GROUPS[rec.group]
            assert dominant_hz(rec.signal, RATE) == pytest.approx(TONES[rec.label] * speed, abs=1.0)


def test_classes_put_the_healthy_label_first():
    assert order_classes(["outer", "ball", "Healthy", "ball"]) == ("Healthy", "ball", "outer")
    assert order_classes(["b", "a", "normal"]) == ("normal", "a", "b")
    assert order_classes(["b", "a"]) == ("a", "b")


def _problem(root: Path, lines: list[str], header: str = HEADER, folds: bool = True) -> str:
    path = root / "bad.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    with pytest.raises(ManifestError) as e:
        load_signals(m := read_manifest(path), RATE, WINDOW)
        check_protocol(m, folds)
    return str(e.value)


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ("line-a/absent.wav,normal,line-a,4000,", "no such file"),
        ("line-a/notes.txt,normal,line-a,4000,", "unknown extension '.txt'"),
        ("line-a/inner.csv,inner,line-a,4000,pressure", "no column 'pressure'; the header names time_s, accel_g"),
        ("line-a/outer.npy,outer,line-a,4000,", "2 columns: set the manifest's channel"),
        ("line-a/outer.npy,outer,line-a,4000,5", "no column 5: it has 2"),
        ("line-b/normal.mat,normal,line-b,12000,X999_DE_time", "no variable 'X999_DE_time'"),
        ("line-c/inner.mat,inner,line-c,4000,", "0 variables ending in _DE_time (it has other, vib)"),
        ("line-b/inner.wav,inner,line-b,4000,", "2 channels: set the manifest's channel"),
        ("line-a/normal.wav,normal,line-a,4000,", "the file says 8000 Hz, the manifest 4000 Hz"),
        ("line-a/nan.npy,normal,line-a,4000,", "1 non-finite samples"),
        ("line-a/short.npy,normal,line-a,4000,", "shorter than 5 windows of 256"),
        ("line-a/inner.csv,inner,line-a,fast,accel_g", "sample_rate_hz 'fast' is not a number"),
        ("line-a/inner.csv,,line-a,4000,accel_g", "empty label"),
    ],
)
def test_a_bad_row_is_refused_by_file_and_line(dataset, row, says):
    root, _ = dataset
    x = tone("normal", "line-a", RATE, 0)
    np.save(root / "line-a/nan.npy", np.where(np.arange(len(x)) == 7, np.nan, x))
    np.save(root / "line-a/short.npy", x[: 5 * WINDOW - 1])
    (root / "line-a/notes.txt").write_text("not samples")
    message = _problem(root, [ROWS[3], row, *ROWS[4:]])
    assert f"bad.csv:3: {row.split(',')[0]}: " in message and says in message, message


def test_what_the_protocol_needs_is_refused_by_name(dataset):
    root, _ = dataset
    assert "missing: group" in _problem(root, ["a.npy,normal,4000"], header="path,label,sample_rate_hz")
    assert "unknown: chanel" in _problem(root, ROWS, header=HEADER.replace("channel", "chanel"))
    assert "listed twice (lines 2 and 11)" in _problem(root, [*ROWS, ROWS[0]])
    one = _problem(root, [*ROWS, "line-a/outer.npy,cage,line-a,4000,0"])
    assert "bad.csv:11: line-a/outer.npy: label 'cage' has one recording only" in one
    assert "leave-one-group-out needs it in two groups" in one
    for i in (1, 2):
        np.save(root / f"line-a/cage{i}.npy", tone("outer", "line-a", RATE, 10 + i))
    lone = _problem(root, [*ROWS, "line-a/cage1.npy,cage,line-a,4000,", "line-a/cage2.npy,cage,line-a,4000,"])
    assert "label 'cage' is recorded in group 'line-a' only (lines 11, 12)" in lone
    single = [r.replace("line-b,", "line-a,").replace("line-c,", "line-a,") for r in ROWS]
    assert "one group only (line-a): leave-one-group-out needs two groups or more" in _problem(root, single)
    check_protocol(read_manifest(root / "bad.csv"), folds=False)  # the time split alone needs no groups
    only = _problem(root, [r for r in ROWS if ",normal," in r])
    assert "one label only (normal)" in only


def test_the_folds_leave_one_group_out(dataset):
    root, _ = dataset
    manifest = read_manifest(root / "manifest.csv")
    recordings = load_signals(manifest, RATE, WINDOW)
    for group in manifest.groups:
        train_recs, held = leave_one_group_out(recordings, group)
        assert {r.group for r in held} == {group} and group not in {r.group for r in train_recs}
        assert sorted(r.row.line for r in train_recs + held) == [r.line for r in manifest.rows]
        assert {r.label for r in train_recs} == set(manifest.classes)  # every class left to train on


def test_fine_tuning_starts_from_the_shipped_checkpoint_with_a_new_classifier(dataset):
    root, _ = dataset
    shipped = load_checkpoint(MODELS / "drsn_cw_cwru.pt")
    cfg, start, info = fine_tune_start(MODELS / "drsn_cw_cwru.pt", 3, Options(window=WINDOW * 4))
    assert cfg.classes == 3 and cfg.window == WINDOW * 4 and cfg.stages == shipped.config.stages
    assert set(start) == {k for k in shipped.state_dict() if not k.startswith("fc.")}
    assert info["classifier"] == "re-initialised (10 -> 3 classes)"
    # The network starts from those weights (no epoch: what train() returns is where it started).
    recordings = load_signals(read_manifest(root / "manifest.csv"), RATE, cfg.window)
    model, _ = train(recordings, cfg, TrainConfig(epochs=0, threads=1), NoiseProtocol(), initial_state=start)
    for key, value in start.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.fc.weight.shape == (3, cfg.stages[-1][0])
    with pytest.raises(ManifestError, match="architecture differs from the network asked for beyond the final"):
        fine_tune_start(MODELS / "drsn_cw_cwru.pt", 3, Options(width=1))
    same = fine_tune_start(MODELS / "drsn_cw_cwru.pt", 10, Options())
    assert same[2]["classifier"] == "kept (10 classes)" and "fc.weight" in same[1]


TINY = ["--window", str(WINDOW), "--rate", str(RATE), "--epochs", "2", "--width", "1", "--units", "1"]
TINY += ["--stages", "2", "--stem-kernel", "16", "--stem-stride", "4", "--hop", "256", "--batch", "64"]
TINY += ["--threads", "1"]  # the machine's two cores are shared


@pytest.fixture(scope="module")
def version(dataset):
    root, _ = dataset
    repo = root / "repository"
    args = ["manifest", "--manifest", str(root / "manifest.csv"), "--repository", str(repo), "--name", "plant-pump"]
    args += ["--version", "1.0.0", *TINY, "--runs-dir", str(root / "runs"), "--sensor", "pump DE accelerometer"]
    assert main(args) == 0
    return repo / "plant-pump" / "1.0.0", args


def test_the_version_folder_holds_exactly_the_served_files(version):
    folder, _ = version
    assert sorted(p.name for p in folder.iterdir()) == [
        "plant_pump.golden.npz",
        "plant_pump.json",
        "plant_pump.onnx",
        "report.md",
    ]
    assert [p.name for p in folder.parent.iterdir()] == ["1.0.0"]  # no staging folder left behind


def test_the_card_validates_and_describes_the_data(version):
    folder, _ = version
    card = json.loads((folder / "plant_pump.json").read_text())
    jsonschema.Draft202012Validator(json.loads(CARD_SCHEMA.read_text())).validate(card)
    assert (card["name"], card["version"]) == ("plant-pump", "1.0.0")
    assert card["classes"] == ["normal", "inner", "outer"]
    assert card["input"] | {"window": WINDOW, "sample_rate_hz": RATE, "name": "vibration"} == card["input"]
    assert card["default_hop"] == WINDOW // 2 and card["golden"] == "plant_pump.golden.npz"
    assert card["sha256"] == sha256(folder / card["onnx"])
    assert card["outputs"] == {"logits": "logits", "shrinkage": "shrinkage", "ood_score": "ood_score"}
    assert card["ood"]["uncertain_above"] > 0
    assert card["input_range"]["unit"] == "g" and 0 < card["input_range"]["rms_accepted"][0]
    conditions = card["operating_conditions"]
    assert conditions["groups"] == list(GROUPS) and conditions["sensor"] == "pump DE accelerometer"
    assert conditions["channels"] == ["1", "accel_g", "vib"] and conditions["recorded_at_hz"] == [4000, 8000, 12000]
    folds = card["evaluation"]["held_out_groups"]["folds"]
    assert set(folds) == set(GROUPS)
    for group, fold in folds.items():
        assert fold["test_group"] == group and group not in fold["train_groups"]
        assert set(fold["accuracy"]) == {"clean", "gaussian-4", "gaussian-8"}
        acc = fold["accuracy"]["clean"]
        assert acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1] and len(acc["seeds"]) == 1
    assert set(card["evaluation"]["accuracy"]) == {"clean", "gaussian"}
    cal = card["calibration"]
    assert cal["temperature"] > 0 and 0 <= cal["uncertain_below"] <= 1
    assert set(cal["per_held_out_group"]) == set(GROUPS)
    assert len(card["training"]["data"]["recordings"]) == len(ROWS) and card["training"]["init_from"] is None


def test_onnx_runtime_reproduces_the_golden_file(version):
    folder, _ = version
    card = json.loads((folder / "plant_pump.json").read_text())
    proto = onnx.load(str(folder / card["onnx"]))
    onnx.checker.check_model(proto)
    assert proto.ir_version <= 13 and {o.domain: o.version for o in proto.opset_import}[""] == 17
    (inp,) = proto.graph.input
    assert inp.name == "vibration"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [1, WINDOW]
    assert [o.name for o in proto.graph.output] == ["logits", "shrinkage", "ood_score"]
    golden = dict(np.load(folder / card["golden"]))
    logits, shrink, score = ort_outputs(ort_session(folder / card["onnx"]), golden["windows"])
    assert logits.shape == (len(golden["windows"]), 3) and shrink.shape[1] == card["shrinkage_units"]
    assert np.abs(logits - golden["logits"]).max() <= 1e-5
    assert np.abs(shrink - golden["shrinkage"]).max() <= 1e-5
    assert np.allclose(score, golden["ood_score"], rtol=1e-5)
    assert set(golden["labels"][np.isnan(golden["snr_db"])]) == {0, 1, 2}


def test_the_report_states_folds_noise_and_calibration(version):
    folder, _ = version
    report = (folder / "report.md").read_text()
    for text in ("## Leave one group out", "## The shipped model: time split", "## Calibration", "gaussian-8"):
        assert text in report, text
    for group in GROUPS:
        assert f"| {group} |" in report


def test_a_rerun_reuses_the_runs_and_keeps_an_existing_version(version, capsys):
    folder, args = version
    stamps = {p: p.stat().st_mtime_ns for p in (folder.parents[2] / "runs").rglob("result.json")}
    assert len(stamps) == len(GROUPS) + 1  # one per held-out group and the time split
    assert main(args) == 2
    assert "exists: choose another --version, or pass --overwrite" in capsys.readouterr().err
    again = [*args[: args.index("1.0.0")], "1.1.0", *args[args.index("1.0.0") + 1 :]]
    assert main(again) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["1.0.0", "1.1.0"]
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == sorted(p.name for p in (folder.parent / "1.1.0").iterdir())
    with (
        np.load(folder / "plant_pump.golden.npz") as a,
        np.load(folder.parent / "1.1.0" / "plant_pump.golden.npz") as b,
    ):
        assert np.array_equal(a["logits"], b["logits"])  # the same stored model, exported again


def test_fine_tuning_a_version_on_fewer_classes(version, dataset):
    root, _ = dataset
    folder, _ = version
    (root / "two.csv").write_text("\n".join([HEADER, *[r for r in ROWS if ",outer," not in r]]) + "\n")
    args = ["manifest", "--manifest", str(root / "two.csv"), "--repository", str(root / "repository")]
    args += ["--name", "plant-pump", "--version", "2.0.0", *TINY, "--no-folds", "--no-ood"]
    args += ["--init-from", str(root / "runs" / "time-split" / "s0" / "model.pt")]
    assert main(args) == 0
    card = json.loads((folder.parent / "2.0.0" / "plant_pump.json").read_text())
    assert card["classes"] == ["normal", "inner"] and "calibration" not in card and "ood" not in card
    assert card["outputs"] == {"logits": "logits", "shrinkage": "shrinkage"}
    assert card["training"]["init_from"]["classifier"] == "re-initialised (3 -> 2 classes)"
    assert card["training"]["recipe"]["lr"] == 0.01


def test_golden_windows_caps_the_golden_file_over_every_class(version, capsys):
    folder, args = version
    capped = [*args[: args.index("1.0.0")], "1.2.0", *args[args.index("1.0.0") + 1 :], "--golden-windows", "4"]
    assert main(capped) == 0  # the stored runs, exported again
    card = json.loads((folder.parent / "1.2.0" / "plant_pump.json").read_text())
    golden = dict(np.load(folder.parent / "1.2.0" / card["golden"]))
    with np.load(folder / "plant_pump.golden.npz") as full:
        assert len(full["windows"]) > 4
        # The first window of every class clean, then a noisy one: a subset of the full file, in its order.
        clean = np.isnan(golden["snr_db"])
        assert list(golden["labels"][clean]) == [0, 1, 2] and (~clean).sum() == 1
        rows = [int(np.flatnonzero((full["windows"] == w).all(1))[0]) for w in golden["windows"]]
        assert rows == sorted(rows)
        assert np.array_equal(golden["logits"], full["logits"][rows])
    logits = ort_outputs(ort_session(folder.parent / "1.2.0" / card["onnx"]), golden["windows"])[0]
    assert np.abs(logits - golden["logits"]).max() <= 1e-5
    capsys.readouterr()
    assert main([*capped[: capped.index("1.2.0")], "1.3.0", *capped[capped.index("1.2.0") + 1 : -1], "0"]) == 2
    assert "--golden-windows 0: at least 1" in capsys.readouterr().err
