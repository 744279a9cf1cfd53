"""condition-windows on the committed excerpt with untrained tiny networks: the file's schema, streams cut in time
order, and the healthy baseline seen only through the part each fold held out."""

import numpy as np
import pytest
import torch

from drsntrain import condition_windows as cw
from drsntrain.calibrate import softmax
from drsntrain.data import CLASSES, leave_one_load_out, load_recordings, loads
from drsntrain.model import DRSN, ModelConfig
from drsntrain.train import predict

from .conftest import multi_load_tree

WINDOW, HOP = 512, 256
REALISATIONS, HEALTHY_REALISATIONS = 2, 3
TEMPERATURE = 1.7
NOISY = {("gaussian", -4.0), ("gaussian", -8.0), ("laplacian", -8.0), ("pink", -8.0)}


class Recorder(torch.nn.Module):
    """An untrained network that keeps every window it is shown."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        cfg = ModelConfig(window=WINDOW, stem_channels=4, stem_kernel=16, stem_stride=4, stages=((4, 1), (8, 1)))
        self.net, self.seen = DRSN(cfg), []

    def forward(self, x):
        self.seen.append(x[:, 0].numpy().copy())
        return self.net(x)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    recs = load_recordings(multi_load_tree(tmp_path_factory.mktemp("data")))
    folds = [cw.Fold(load, f"lolo-{load}hp/cw-s0", Recorder(load), TEMPERATURE, 0.7, "fold") for load in loads(recs)]
    doc = cw.condition_windows(
        recs, folds, WINDOW, realisations=REALISATIONS, healthy_realisations=HEALTHY_REALISATIONS
    )
    doc["notes"] = cw.notes({"calibration": {"temperature": 0.78, "uncertain_below": 0.77}})
    path = tmp_path_factory.mktemp("out") / "condition_windows.json.gz"
    cw.write(doc, path)
    return recs, folds, cw.read(path)


def healthy_signal(recs):
    return next(r for r in recs if r.label == "normal").signal


def stream(recs, fold: dict, seq: dict) -> np.ndarray:
    """The samples a sequence stands for: the whole fault recording, or the fold's healthy part."""
    if seq["healthy"]:
        start, stop = fold["healthy_part"]
        return healthy_signal(recs)[start:stop]
    return next(r for r in recs if r.path.stem == seq["recording"]).signal


def test_schema(made):
    _, _, doc = made
    assert {"classes", "window", "hop", "sample_rate_hz", "notes", "folds", "sequences"} <= set(doc)
    assert doc["classes"] == list(CLASSES)
    assert (doc["window"], doc["hop"], doc["sample_rate_hz"]) == (WINDOW, WINDOW // 2, 12_000)
    assert [f["heldout_load"] for f in doc["folds"]] == [0, 1, 2]
    for f in doc["folds"]:
        assert f["run"] == f"lolo-{f['heldout_load']}hp/cw-s0" and f["calibration"] == "fold"
        assert f["temperature"] == TEMPERATURE and f["uncertain_below"] == 0.7
        assert f["healthy_windows"] > 0 and f["healthy_realisations"] == HEALTHY_REALISATIONS
    cells: dict = {}
    for s in doc["sequences"]:
        assert set(s) == {"fold", "recording", "true_class", "healthy", "noise", "snr_db", "realisation"} | {
            "first_sample",
            "label",
            "confidence",
        }
        assert s["healthy"] == (s["true_class"] == "normal") and s["true_class"] in CLASSES
        assert len(s["first_sample"]) == len(s["label"]) == len(s["confidence"]) > 0
        assert all(0 <= c < len(CLASSES) for c in s["label"])
        assert s["snr_db"] is None or isinstance(s["snr_db"], int)  # -4, not -4.0
        assert all(0 <= c <= 1 and round(c, 4) == c for c in s["confidence"])
        key = (s["fold"], s["recording"])
        cells.setdefault(key, set()).add((s["noise"], s["snr_db"], s["realisation"]))
    for (_, rec), got in cells.items():
        reps = HEALTHY_REALISATIONS if rec.startswith("normal") else REALISATIONS
        assert got == {("clean", None, 0)} | {(t, snr, r) for t, snr in NOISY for r in range(reps)}
    # Every recording of the held-out load, the 9 faults and the healthy part, in every fold.
    for load in (0, 1, 2):
        held = {r for f, r in cells if f == load}
        assert len(held) == 10 and sum(r.startswith("normal") for r in held) == 1


def test_windows_follow_the_stream_in_time_order(made):
    recs, folds, doc = made
    by_load = {f.heldout_load: f for f in folds}
    fold_rows = {f["heldout_load"]: f for f in doc["folds"]}
    for s in doc["sequences"]:
        signal = stream(recs, fold_rows[s["fold"]], s)
        assert s["first_sample"] == list(range(0, len(signal) - WINDOW + 1, HOP))
        if s["noise"] != "clean":
            continue
        # The i-th label and confidence are the fold model's, calibrated, on the window starting at first_sample[i].
        x = np.stack([signal[i : i + WINDOW] for i in s["first_sample"]])
        logits, _ = predict(by_load[s["fold"]].model, x)
        p = softmax(logits.astype(np.float64), TEMPERATURE)
        assert s["label"] == p.argmax(1).tolist()
        assert np.allclose(s["confidence"], p.max(1), atol=1e-4)
    assert all(
        f["healthy_windows"] == len(range(0, np.diff(f["healthy_part"])[0] - WINDOW + 1, HOP))
        for f in fold_rows.values()
    )


def test_each_fold_sees_only_the_healthy_part_it_never_trained_on(made):
    recs, folds, doc = made
    full = healthy_signal(recs)
    covered = np.zeros(len(full), dtype=int)
    for fold in folds:
        train, _ = leave_one_load_out(recs, fold.heldout_load)
        trained = np.zeros(len(full), dtype=bool)
        for part in (r.signal for r in train if r.label == "normal"):
            start = next(i for i in range(len(full)) if np.array_equal(full[i : i + len(part)], part))
            trained[start : start + len(part)] = True
        # Every healthy sample the model was shown, found in the baseline by content.
        shown = np.zeros(len(full), dtype=bool)
        for row in np.concatenate(fold.model.seen):
            for start in np.flatnonzero(full[: len(full) - WINDOW + 1] == row[0]):
                if np.array_equal(full[start : start + WINDOW], row):
                    shown[start : start + WINDOW] = True
        assert shown.any() and not (shown & trained).any()
        # ... and it is the part the file names.
        row = next(f for f in doc["folds"] if f["heldout_load"] == fold.heldout_load)
        start, stop = row["healthy_part"]
        assert shown[start:stop].any() and not shown[:start].any() and not shown[stop:].any()
        covered += shown
    # The three folds see three disjoint parts of the baseline.
    assert covered.max() == 1
