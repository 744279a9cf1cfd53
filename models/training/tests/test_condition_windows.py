"""condition-windows on the committed excerpt with untrained tiny networks: the file's schema, streams cut in time
order, the healthy baseline seen only through the part each fold held out, and the shipped model's sequences over
whole recordings."""

import numpy as np
import pytest
import torch

from drsntrain import condition_windows as cw
from drsntrain.calibrate import softmax
from drsntrain.data import CLASSES, leave_one_load_out, load_recordings, loads
from drsntrain.model import DRSN, ModelConfig
from drsntrain.noise import measured_snr_db
from drsntrain.train import predict

from .conftest import multi_load_tree

WINDOW, HOP = 512, 256
REALISATIONS, HEALTHY_REALISATIONS = 2, 3
TEMPERATURE = 1.7
NOISY = {("gaussian", -4.0), ("gaussian", -8.0), ("laplacian", -8.0), ("pink", -8.0)}
# The shipped model: an untrained network at a temperature that spreads its confidences, and a threshold inside them.
SHIPPED_REALISATIONS, SHIPPED_HEALTHY_REALISATIONS = 2, 5
SHIPPED_TEMPERATURE, SHIPPED_UNCERTAIN = 0.05, 0.9
SHIPPED_NOISY = {(t, snr) for t in ("gaussian", "laplacian", "pink") for snr in (-4, -8)}


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
    shipped = cw.Shipped(Recorder(7), SHIPPED_TEMPERATURE, SHIPPED_UNCERTAIN, "9.8.7")
    doc = cw.condition_windows(
        recs,
        folds,
        WINDOW,
        realisations=REALISATIONS,
        healthy_realisations=HEALTHY_REALISATIONS,
        shipped=shipped,
        shipped_options={
            "realisations": SHIPPED_REALISATIONS,
            "healthy_realisations": SHIPPED_HEALTHY_REALISATIONS,
        },
    )
    doc["notes"] = cw.notes({"calibration": {"temperature": 0.78, "uncertain_below": 0.77}})
    doc["shipped"]["note"] = "how the shipped sequences were made"
    path = tmp_path_factory.mktemp("out") / "condition_windows.json.gz"
    cw.write(doc, path)
    return recs, folds, shipped, cw.read(path)


def of_model(doc: dict, model: str) -> list[dict]:
    return [s for s in doc["sequences"] if s["model"] == model]


def healthy_signal(recs):
    return next(r for r in recs if r.label == "normal").signal


def stream(recs, fold: dict, seq: dict) -> np.ndarray:
    """The samples a sequence stands for: the whole fault recording, or the fold's healthy part."""
    if seq["healthy"]:
        start, stop = fold["healthy_part"]
        return healthy_signal(recs)[start:stop]
    return next(r for r in recs if r.path.stem == seq["recording"]).signal


def test_schema(made):
    _, _, _, doc = made
    assert {"classes", "window", "hop", "sample_rate_hz", "notes", "folds", "sequences", "shipped"} <= set(doc)
    assert doc["classes"] == list(CLASSES)
    assert (doc["window"], doc["hop"], doc["sample_rate_hz"]) == (WINDOW, WINDOW // 2, 12_000)
    assert [f["heldout_load"] for f in doc["folds"]] == [0, 1, 2]
    for f in doc["folds"]:
        assert f["run"] == f"lolo-{f['heldout_load']}hp/cw-s0" and f["calibration"] == "fold"
        assert f["temperature"] == TEMPERATURE and f["uncertain_below"] == 0.7
        assert f["healthy_windows"] > 0 and f["healthy_realisations"] == HEALTHY_REALISATIONS
    cells: dict = {}
    for s in doc["sequences"]:
        assert set(s) == {"model", "fold", "recording", "true_class", "healthy", "noise", "snr_db", "realisation"} | {
            "first_sample",
            "label",
            "confidence",
        }
        assert s["model"] in ("fold", "shipped") and (s["fold"] == -1) == (s["model"] == "shipped")
        assert s["healthy"] == (s["true_class"] == "normal") and s["true_class"] in CLASSES
        assert len(s["first_sample"]) == len(s["label"]) == len(s["confidence"]) > 0
        assert all(0 <= c < len(CLASSES) for c in s["label"])
        assert s["snr_db"] is None or isinstance(s["snr_db"], int)  # -4, not -4.0
        assert all(0 <= c <= 1 for c in s["confidence"])
        if s["model"] == "fold":
            assert all(round(c, 4) == c for c in s["confidence"])
        else:  # 3 decimals, more only next to the card's threshold (where 3 could move it across)
            assert all(round(c, 3) == c or abs(c - SHIPPED_UNCERTAIN) < 1e-3 for c in s["confidence"])
    # The fold models' sequences come first, the shipped model's after them.
    models = [s["model"] for s in doc["sequences"]]
    assert models == sorted(models) and "fold" in models and "shipped" in models
    for s in of_model(doc, "fold"):
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
    recs, folds, _, doc = made
    by_load = {f.heldout_load: f for f in folds}
    fold_rows = {f["heldout_load"]: f for f in doc["folds"]}
    for s in of_model(doc, "fold"):
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
    recs, folds, _, doc = made
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


def test_shipped_model_runs_on_every_whole_recording_of_its_loads(made):
    recs, _, _, doc = made
    block = doc["shipped"]
    assert (block["temperature"], block["uncertain_below"], block["version"]) == (
        SHIPPED_TEMPERATURE,
        SHIPPED_UNCERTAIN,
        "9.8.7",
    )
    assert block["note"] and block["loads"] == [0, 1, 2]
    healthy = [r for r in recs if r.label == "normal"]
    assert set(block["recordings"]) == {r.path.stem for r in recs} and block["healthy_recordings"] == ["normal_0_97"]
    cells: dict = {}
    for s in of_model(doc, "shipped"):
        cells.setdefault(s["recording"], set()).add((s["noise"], s["snr_db"], s["realisation"]))
        # The whole recording, not a part of it, cut as the server cuts a stream.
        n = len(next(r for r in recs if r.path.stem == s["recording"]).signal)
        assert s["first_sample"] == list(range(0, n - WINDOW + 1, HOP))
        assert block["windows_per_sequence"][s["recording"]] == len(s["label"])
    assert block["healthy_windows"] == len(range(0, len(healthy[0].signal) - WINDOW + 1, HOP))
    # Every fault recording of loads 0-2 and the healthy baseline, clean once and every noise cell, with more
    # noise draws for the healthy one.
    assert set(cells) == {r.path.stem for r in recs}
    for rec, got in cells.items():
        reps = SHIPPED_HEALTHY_REALISATIONS if rec.startswith("normal") else SHIPPED_REALISATIONS
        assert got == {("clean", None, 0)} | {(t, snr, r) for t, snr in SHIPPED_NOISY for r in range(reps)}
    # Each healthy realisation is a different noise draw.
    for t, snr in SHIPPED_NOISY:
        draws = [
            tuple(s["confidence"])
            for s in of_model(doc, "shipped")
            if s["healthy"] and (s["noise"], s["snr_db"]) == (t, snr)
        ]
        assert len(set(draws)) == SHIPPED_HEALTHY_REALISATIONS


def test_shipped_outputs_are_the_shipped_model_at_the_cards_calibration(made):
    recs, _, shipped, doc = made
    for s in of_model(doc, "shipped"):
        if s["noise"] != "clean":
            continue
        signal = next(r for r in recs if r.path.stem == s["recording"]).signal
        x = np.stack([signal[i : i + WINDOW] for i in s["first_sample"]])
        logits, _ = predict(shipped.model.net, x)
        p = softmax(logits.astype(np.float64), SHIPPED_TEMPERATURE)
        assert s["label"] == p.argmax(1).tolist()
        assert np.allclose(s["confidence"], p.max(1), atol=5e-4)
        # Rounded, a confidence stays on its side of uncertain_below: the service's decision is the exact one.
        assert ((np.array(s["confidence"]) < SHIPPED_UNCERTAIN) == (p.max(1) < SHIPPED_UNCERTAIN)).all()


def test_shipped_noise_is_at_the_cells_exact_snr(made):
    recs, _, shipped, doc = made
    clean = np.concatenate(
        [np.stack([r.signal[i : i + WINDOW] for i in range(0, len(r.signal) - WINDOW + 1, HOP)]) for r in recs]
    ).astype(np.float64)
    seen = np.concatenate(shipped.model.seen).astype(np.float64)
    assert len(seen) == sum(len(s["label"]) for s in of_model(doc, "shipped"))
    # Every window shown is a clean window, or one made from a clean window with noise at exactly -4 or -8 dB: the
    # clean window (of all of them) and the SNR whose implied SNR is nearest to exact is the one it was made from.
    targets = np.array([-4.0, -8.0])
    p_clean = (clean**2).mean(1)
    got, source = [], []
    for rows in np.array_split(seen, max(1, len(seen) // 2048)):
        p_noise = ((rows**2).sum(1)[:, None] - 2 * rows @ clean.T + (clean**2).sum(1)[None, :]) / WINDOW
        implied = 10 * np.log10(p_clean[None, :] / np.maximum(p_noise, 1e-300))
        miss = np.abs(implied[:, :, None] - targets[None, None, :])  # (rows, clean windows, targets)
        flat = miss.reshape(len(rows), -1).argmin(1)
        window, target = np.unravel_index(flat, miss.shape[1:])
        exact = miss.reshape(len(rows), -1).min(1) < 1e-3
        is_clean = p_noise.min(1) < 1e-9 * (rows**2).mean(1)  # equal to a clean window up to rounding
        assert (exact | is_clean).all()
        got.append(np.where(is_clean, np.inf, targets[target]))
        source.append(window)
    got, source = np.concatenate(got), np.concatenate(source)
    for snr in (-4, -8):
        assert (got == snr).sum() == sum(len(s["label"]) for s in of_model(doc, "shipped") if s["snr_db"] == snr)
        # ... and as noise.py measures it.
        rows = got == snr
        measured = measured_snr_db(torch.as_tensor(clean[source[rows]]), torch.as_tensor(seen[rows]))
        assert torch.allclose(measured, torch.full_like(measured, snr), atol=0.01)
    assert np.isinf(got).sum() == sum(len(s["label"]) for s in of_model(doc, "shipped") if s["noise"] == "clean")


def test_shipped_summary_counts_what_the_sequences_say(made):
    _, _, _, doc = made
    block = doc["shipped"]
    normal = CLASSES.index("normal")
    assert set(block["healthy_labelled_fault"]) == set(block["accuracy"]) == set(block["cells"])
    sure_somewhere = unsure_somewhere = False
    for cell, row in block["healthy_labelled_fault"].items():
        seqs = [s for s in of_model(doc, "shipped") if cw._cell_name(*_cell(s)) == cell]
        pairs = [(c, p) for s in seqs if s["healthy"] for c, p in zip(s["label"], s["confidence"], strict=True)]
        faults = [p for c, p in pairs if c != normal]
        sure = [p for p in faults if p >= SHIPPED_UNCERTAIN]
        assert (row["windows"], row["labelled_fault"]) == (len(pairs), len(faults))
        assert row["labelled_fault_at_or_above_uncertain_below"] == len(sure)
        assert row["share"] == round(len(faults) / len(pairs), 4)
        sure_somewhere |= bool(sure)
        unsure_somewhere |= len(sure) < len(faults)
        right = [c == CLASSES.index(s["true_class"]) for s in seqs if not s["healthy"] for c in s["label"]]
        assert block["accuracy"][cell] == round(float(np.mean(right)), 4)
    # The threshold splits the untrained network's fault calls, so both counts are exercised.
    assert sure_somewhere and unsure_somewhere


def _cell(s: dict) -> tuple:
    return (None, None) if s["noise"] == "clean" else (s["noise"], float(s["snr_db"]))


def test_shipped_loads_choose_the_recordings(made):
    recs, _, shipped, _ = made
    rows, block = cw.shipped_sequences(recs, shipped, WINDOW, HOP, loads=(1, 2), cells=((None, None),))
    # No healthy recording at 1 or 2 hp: only the fault recordings of those loads, and no healthy count.
    assert {s["recording"] for s in rows} == {r.path.stem for r in recs if r.load_hp in (1, 2)}
    assert block["healthy_recordings"] == [] and block["healthy_labelled_fault"]["clean"]["windows"] == 0


def test_rounding_keeps_a_confidence_on_its_side_of_the_threshold():
    assert cw.rounded(0.61234, 3) == 0.612
    assert cw.rounded(0.61234, 3, keep_side_of=0.7721) == 0.612  # far from it: 3 decimals
    assert cw.rounded(0.77223, 3, keep_side_of=0.7721) == 0.7722  # 0.772 would fall below it
    assert cw.rounded(0.77196, 3, keep_side_of=0.772) == 0.77196  # 0.772 and 0.7720 would not be below it
    assert cw.rounded(0.77249, 3, keep_side_of=0.7721) >= 0.7721
    for value in np.linspace(0.77, 0.775, 2001):
        assert (cw.rounded(float(value), 3, keep_side_of=0.7721) < 0.7721) == (value < 0.7721)
