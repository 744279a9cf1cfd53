import itertools
from pathlib import Path

import numpy as np
import pytest

from drsntrain.data import (
    CLASSES,
    DataNotFoundError,
    RandomWindows,
    Recording,
    contiguous_windows,
    load_recordings,
    parse_name,
    segment_bounds,
    split_windows,
)

from .conftest import FIXTURE_DIR


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
    assert all(r.signal.dtype == np.float32 and len(r.signal) == 4096 for r in recs)


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="DRSN_CWRU_DIR"):
        load_recordings(tmp_path / "nowhere")


def test_real_cwru_recordings(cwru_dir):
    recs = load_recordings(cwru_dir)
    assert {r.label for r in recs} == set(CLASSES)
    assert all(len(r.signal) > 100_000 for r in recs)
    _, y = split_windows(recs, "test", 2048)
    assert np.bincount(y, minlength=len(CLASSES)).min() > 0
