import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from drsntrain.data import (
    CLASSES,
    DataNotFoundError,
    RandomWindows,
    Recording,
    all_windows,
    contiguous_windows,
    extrapolates,
    hold_out_loads,
    independent_windows,
    leave_one_load_out,
    load_recordings,
    loads,
    parse_name,
    segment_bounds,
    speed_factors,
    split_windows,
    train_on_one_load,
)

from .conftest import FIXTURE_DIR, multi_load_tree


@pytest.mark.parametrize(
    "name,expected",
    [
        ("12k_Drive_End_B007_0_118.mat", ("ball_007", 0, 118)),
        ("12k_Drive_End_IR014_1_170.mat", ("inner_race_014", 1, 170)),
        ("12k_Drive_End_OR021@6_2_236.mat", ("outer_race_021", 2, 236)),
        ("normal_0_97.mat", ("normal", 0, 97)),
        ("12k_Fan_End_notes.txt", None),
        ("12k_Fan_End_IR007_0_278.mat", None),
        ("48k_Drive_End_B007_0_122.mat", None),
        ("12k_Drive_End_OR007@3_0_144.mat", None),
    ],
)
def test_file_names_map_to_labels(name, expected):
    assert parse_name(name) == expected


@pytest.mark.parametrize("n", [4096, 121265, 243938, 1001])
def test_splits_are_disjoint_ordered_and_cover_the_recording(n):
    bounds = [segment_bounds(n, s) for s in ("train", "val", "test")]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, stop), (start, _) in itertools.pairwise(bounds):
        assert stop == start


def synthetic(n=20_000, label="ball_007"):
    # Sample values equal their index, so every window says where it came from.
    return Recording(Path("x.mat"), label, 0, 1, np.arange(n, dtype=np.float32))


def test_windows_of_different_splits_share_no_sample():
    rec = synthetic()
    seen = {}
    for split in ("train", "val", "test"):
        x, _ = split_windows([rec], split, 512)
        seen[split] = set(x.ravel().astype(int))
    x, _ = RandomWindows([rec], 512, hop=64).draw(np.random.default_rng(0))
    seen["train-random"] = set(x.ravel().astype(int))
    assert not seen["train"] & seen["val"]
    assert not seen["val"] & seen["test"]
    assert not seen["train-random"] & (seen["val"] | seen["test"])


def test_random_training_windows_are_contiguous_and_inside_the_train_segment():
    rec = synthetic()
    stop = segment_bounds(len(rec.signal), "train")[1]
    x, y = RandomWindows([rec], 1024, hop=256).draw(np.random.default_rng(1))
    assert (np.diff(x, axis=1) == 1).all()
    assert x.max() < stop
    assert (y == CLASSES.index("ball_007")).all()
    assert len(x) == (stop - 1024) // 256 + 1


def test_test_windows_do_not_overlap():
    x = contiguous_windows(np.arange(10_000, dtype=np.float32), 2048)
    assert x.shape == (4, 2048)
    assert len(set(x.ravel())) == x.size


def test_fixture_loads_through_the_real_loader():
    recs = load_recordings(FIXTURE_DIR)
    assert sorted(r.label for r in recs) == sorted(CLASSES)
    assert all(r.signal.dtype == np.float32 for r in recs)
    # 16,384 samples at 12 kHz each; the healthy baseline's are stored as the 65,536 48 kHz samples they come from.
    assert {len(r.signal) for r in recs} == {16384}


def test_healthy_baseline_is_brought_from_48_to_12_khz(tmp_path):
    t48 = np.arange(48_000) / 48_000
    t12 = np.arange(12_000) / 12_000
    (tmp_path / "0HP").mkdir()
    scipy.io.savemat(tmp_path / "0HP" / "normal_0_97.mat", {"X097_DE_time": np.sin(2 * np.pi * 1000 * t48)[:, None]})
    fault = np.sin(2 * np.pi * 1000 * t12)[:, None]
    scipy.io.savemat(tmp_path / "0HP" / "12k_Drive_End_B007_0_118.mat", {"X118_DE_time": fault})
    recs = {r.label: r.signal for r in load_recordings(tmp_path)}
    assert len(recs["normal"]) == 12_000 and len(recs["ball_007"]) == 12_000
    assert np.array_equal(recs["ball_007"], fault.ravel().astype(np.float32))  # 12 kHz files are left alone
    # One second of a 1 kHz tone: at 12 kHz its spectral line is at 1 kHz (bin 1000), not at a quarter of it.
    for signal in recs.values():
        assert np.abs(np.fft.rfft(signal)).argmax() == 1000
    # Away from the edges the band-limited resampling keeps the tone's shape.
    assert np.abs(recs["normal"][200:-200] - recs["ball_007"][200:-200]).max() < 1e-2


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="DRSN_CWRU_DIR"):
        load_recordings(tmp_path / "nowhere")


def test_real_cwru_recordings(cwru_dir):
    recs = load_recordings(cwru_dir)
    assert {r.label for r in recs} == set(CLASSES)
    assert all(len(r.signal) > 100_000 for r in recs if r.label != "normal")
    # The healthy baseline: 243,938 samples at 48 kHz, about 5 s, a quarter as many at 12 kHz.
    assert [len(r.signal) for r in recs if r.label == "normal"] == [60_985]
    _, y = split_windows(recs, "test", 2048)
    assert np.bincount(y, minlength=len(CLASSES)).min() > 0


def test_linked_folders_and_files_are_followed(tmp_path):
    recs = load_recordings(multi_load_tree(tmp_path))
    assert loads(recs) == [0, 1, 2]
    assert len(recs) == 10 + 9 + 9  # the healthy baseline exists at 0 hp only
    # A link loop is read once, not forever.
    (tmp_path / "1HP" / "again").symlink_to(tmp_path, target_is_directory=True)
    assert len(load_recordings(tmp_path)) == len(recs)


def test_leave_one_load_out_holds_out_a_load_and_splits_the_single_load_class():
    # Sample values are unique indices, so shared samples would show.
    n = 30_000
    recs = [Recording(Path("n.mat"), "normal", 0, 97, np.arange(n, dtype=np.float32))]
    recs += [
        Recording(Path(f"{load}.mat"), label, load, 100 + load, np.arange(n, dtype=np.float32) + 1e6 * (load + 1))
        for load in (0, 1, 2)
        for label in CLASSES[1:3]
    ]
    thirds = set()
    for load in (0, 1, 2):
        train, held = leave_one_load_out(recs, load)
        assert {r.load_hp for r in held} == {load}
        assert load not in {r.load_hp for r in train}
        assert sorted(r.label for r in held) == sorted(CLASSES[:3])
        # The healthy recording: this fold's third is tested, the other two are trained on; no sample is shared.
        held_normal = next(r for r in held if r.label == "normal").signal
        train_normal = np.concatenate([r.signal for r in train if r.label == "normal"])
        assert len(held_normal) == n // 3 and len(train_normal) == n - n // 3
        assert not set(held_normal.tolist()) & set(train_normal.tolist())
        thirds.add(int(held_normal[0]))
    assert thirds == {0, n // 3, 2 * n // 3}, "each fold tests a different third, in time order"


def test_leave_one_load_out_needs_two_loads():
    with pytest.raises(DataNotFoundError, match="two loads"):
        leave_one_load_out(load_recordings(FIXTURE_DIR), 0)


def test_all_windows_cover_each_recording_back_to_back():
    rec = synthetic(n=5000)
    x, y, src = all_windows([rec], 2048)
    assert x.shape == (2, 2048) and (x.ravel() == np.arange(4096)).all()
    assert (y == rec.class_index).all() and (src == 0).all()


def test_overlapping_windows_say_what_they_are_worth():
    recs = [synthetic(n=5000), synthetic(n=9000, label="ball_014")]
    x, _, src = all_windows(recs, 2048, hop=1024)
    assert len(x) == 3 + 7 and list(src) == [0] * 3 + [1] * 7
    assert np.array_equal(x[1], recs[0].signal[1024:3072]) and np.array_equal(x[4], recs[1].signal[1024:3072])
    # 3 windows every 1024 samples span 4096 samples: two windows' worth of independent signal.
    assert independent_windows(3, 2048, 1024) == 2.0 and independent_windows(0, 2048, 1024) == 0.0


def three_loads(n=30_000):
    recs = [Recording(Path("n.mat"), "normal", 0, 97, np.arange(n, dtype=np.float32))]
    recs.append(Recording(Path("n.mat"), "normal", 0, 97, -np.arange(n, dtype=np.float32), channel="FE"))
    recs += [
        Recording(Path(f"{load}.mat"), label, load, 100 + load, np.arange(n, dtype=np.float32) + 1e6 * (load + 1))
        for load in (0, 1, 2)
        for label in CLASSES[1:3]
    ]
    return recs


def test_training_on_one_load_tests_on_every_other():
    for load in (0, 1, 2):
        train, held = train_on_one_load(three_loads(), load)
        assert {r.load_hp for r in train} == {load}
        assert {r.load_hp for r in held} == {0, 1, 2} - {load}
        # The fan-end channel of the healthy baseline is trained on, never tested on.
        assert any(r.channel == "FE" for r in train) and not any(r.channel == "FE" for r in held)
    assert extrapolates([0], [1, 2]) and extrapolates([2], [0, 1]) and not extrapolates([1], [0, 2])
    with pytest.raises(ValueError, match="no load to train on"):
        hold_out_loads(three_loads(), [0, 1, 2])


def test_balance_draws_as_many_healthy_windows_as_the_largest_class():
    recs = [synthetic(n=60_000), synthetic(n=20_000, label="normal")]
    _, y = RandomWindows(recs, 1024, hop=512, balance=True).draw(np.random.default_rng(0))
    counts = np.bincount(y, minlength=len(CLASSES))
    assert counts[CLASSES.index("normal")] == counts[CLASSES.index("ball_007")]
    unbalanced = RandomWindows(recs, 1024, hop=512).draw(np.random.default_rng(0))[1]
    assert np.bincount(unbalanced)[0] < counts[0]


def test_fan_end_of_the_healthy_baseline_is_extra_training_signal(tmp_path):
    (tmp_path / "0HP").mkdir()
    t = np.arange(48_000) / 48_000
    scipy.io.savemat(
        tmp_path / "0HP" / "normal_0_97.mat",
        {"X097_DE_time": np.sin(2 * np.pi * 100 * t)[:, None], "X097_FE_time": np.cos(2 * np.pi * 100 * t)[:, None]},
    )
    assert [r.channel for r in load_recordings(tmp_path)] == ["DE"]
    recs = load_recordings(tmp_path, extra_healthy=True)
    assert [(r.label, r.channel, len(r.signal)) for r in recs] == [("normal", "DE", 12_000), ("normal", "FE", 12_000)]
    assert recs[1].train_only and not recs[0].train_only
    _, y = split_windows(recs, "test", 1024)
    assert len(y) == 2, "only the drive-end channel is tested on"


def test_linear_speed_perturbation_resamples_inside_the_train_segment():
    rec = synthetic(n=50_000)
    stop = segment_bounds(len(rec.signal), "train")[1]
    x, _ = RandomWindows([rec], 1024, hop=256, speed=0.05, method="linear").draw(np.random.default_rng(2))
    steps = np.diff(x, axis=1)
    # A ramp resampled by factor s rises by s per sample: every window is a straight line of slope in [0.95, 1.05].
    # (float32 ramps of up to 30,000 hold about 3 decimals.)
    assert np.allclose(steps, steps.mean(1, keepdims=True), atol=1e-2)
    assert steps.mean(1).min() >= 0.95 - 1e-3 and steps.mean(1).max() <= 1.05 + 1e-3
    assert steps[:, 0].std() > 0.01, "the factor differs from window to window"
    assert x.max() < stop
    with pytest.raises(ValueError, match="speed"):
        RandomWindows([rec], 1024, hop=256, speed=0.7)


def test_band_limited_speed_perturbation_moves_every_frequency_and_stays_in_the_train_segment():
    n, tone_hz = 60_000, 1500.0
    stop = segment_bounds(n, "train")[1]
    signal = np.full(n, 1000.0, dtype=np.float32)  # after the train segment: a level no training window may show
    signal[:stop] = np.sin(2 * np.pi * tone_hz * np.arange(stop) / 12_000)
    rec = Recording(Path("t.mat"), "ball_007", 0, 1, signal)
    x, _ = RandomWindows([rec], 4096, hop=256, speed=0.04, raw_share=0.25).draw(np.random.default_rng(3))
    assert np.abs(x).max() < 1.1
    peaks = np.fft.rfftfreq(4096, 1 / 12_000)[np.abs(np.fft.rfft(x * np.hanning(4096), axis=1)).argmax(1)]
    factors = np.round(peaks / tone_hz, 2)
    assert set(factors) <= set(speed_factors(0.04)) | {1.0}, sorted(set(factors))
    assert 0.15 < (factors == 1.0).mean() < 0.35, "the raw share stays at the recorded speed"
    assert len(set(factors)) >= 7, "every factor of the range is drawn"
