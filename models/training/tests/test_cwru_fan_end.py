"""examples/cwru_fan_end.py: the CWRU fan-end channel as a plant's second sensor position. On a CWRU-like tree
written here from the committed 0 hp excerpts (no full data needed): the manifest's rows, and a tiny network trained
on it by `drsntrain manifest`."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from drsntrain.__main__ import main
from drsntrain.data import parse_name
from drsntrain.manifest import load_signals, read_manifest

from .conftest import FIXTURE_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "cwru_fan_end.py"
WINDOW = 1024
TINY = ["--window", str(WINDOW), "--rate", "12000", "--epochs", "2", "--width", "1", "--units", "1", "--stages", "2"]
TINY += ["--stem-kernel", "16", "--stem-stride", "4", "--hop", "512", "--threads", "1", "--repeats", "1"]
# A file whose variables are not numbered as its name is: the script must read the name from the file.
RENUMBERED = ("1HP/12k_Drive_End_IR007_1_106.mat", "X999_FE_time")


def fan_end(excerpt: np.ndarray, load: int) -> np.ndarray:
    """A fan-end signal unlike the drive-end one beside it (reversed, and scaled per load)."""
    return (excerpt[::-1] * (0.5 + 0.25 * load)).astype(np.float32)


@pytest.fixture(scope="module")
def cwru_tree(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """<load>HP/ folders for 0 and 1 hp of every committed fault excerpt with DE, FE, BA and RPM variables as CWRU
    stores them, the healthy baseline (0 hp only, as in the real data) and a file that is not a recording; returns
    the root and each fault file's fan-end signal."""
    root = tmp_path_factory.mktemp("cwru")
    fan = {}
    for load in (0, 1):
        folder = root / f"{load}HP"
        folder.mkdir()
        for f in sorted((FIXTURE_DIR / "0HP").glob("12k_*.mat")):
            _, _, num = parse_name(f.name)
            excerpt = scipy.io.loadmat(f)[f"X{num:03d}_DE_time"].reshape(-1)
            name = f"{f.stem.rsplit('_', 2)[0]}_{load}_{num + load}.mat"
            key = RENUMBERED[1][:-8] if f"{load}HP/{name}" == RENUMBERED[0] else f"X{num + load:03d}"
            fan[f"{load}HP/{name}"] = fan_end(excerpt, load)
            variables = {
                f"{key}_DE_time": excerpt[:, None],
                f"{key}_FE_time": fan[f"{load}HP/{name}"][:, None],
                f"{key}_BA_time": np.zeros((len(excerpt), 1), np.float32),
                f"{key}RPM": np.array([[1797 - 25 * load]]),
            }
            scipy.io.savemat(folder / name, variables, do_compression=True)
    (root / "0HP" / "normal_0_97.mat").symlink_to(FIXTURE_DIR / "0HP" / "normal_0_97.mat")
    (root / "0HP" / "notes.txt").write_text("not a recording")
    return root, fan


def write(root: Path, out: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, str(SCRIPT), "--cwru", str(root), "--out", str(out)]
    return subprocess.run(args, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def manifest(cwru_tree, tmp_path_factory) -> Path:
    root, _ = cwru_tree
    out = tmp_path_factory.mktemp("plant") / "fan_end" / "manifest.csv"
    done = write(root, out)
    assert done.returncode == 0, done.stderr
    return out


def test_every_fault_recording_is_a_fan_end_row_labelled_and_grouped_by_load(cwru_tree, manifest, card):
    root, fan = cwru_tree
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "group", "sample_rate_hz", "channel"]
    files = {(manifest.parent / r["path"]).resolve(): r for r in rows}
    assert not any(Path(r["path"]).is_absolute() for r in rows)  # relative to the manifest, as the reader resolves
    assert set(files) == {(root / name).resolve() for name in fan}  # no healthy baseline, no stray file
    for path, row in files.items():
        label, load, _ = parse_name(path.name)
        assert row["label"] == label and row["label"] in card["classes"]
        assert row["group"] == f"{load}hp" and row["sample_rate_hz"] == "12000"
        fe = [k for k in scipy.io.whosmat(path) if k[0].endswith("_FE_time")]
        assert row["channel"] == fe[0][0]
    renumbered = files[(root / RENUMBERED[0]).resolve()]
    assert renumbered["channel"] == RENUMBERED[1]
    # The reader takes it and reads the fan-end samples, not the drive-end ones.
    read = read_manifest(manifest)
    assert "normal" not in read.classes and len(read.classes) == 9 and read.groups == ("0hp", "1hp")
    for rec in load_signals(read, 12000, WINDOW):
        name = rec.path.relative_to(root.resolve()).as_posix()
        assert np.array_equal(rec.signal, fan[name]), name


def test_a_folder_without_recordings_is_refused(tmp_path):
    (tmp_path / "0HP").mkdir()
    done = write(tmp_path, tmp_path / "manifest.csv")
    assert done.returncode == 2 and "no CWRU 12 kHz fault recordings" in done.stderr
    assert not (tmp_path / "manifest.csv").exists()


def test_drsntrain_trains_a_fault_only_model_on_it(manifest, tmp_path, capsys):
    repo = tmp_path / "repository"
    args = ["manifest", "--manifest", str(manifest), "--repository", str(repo), "--name", "cwru-fan-end"]
    args += ["--version", "1.0.0", *TINY, "--sensor", "fan-end accelerometer", "--golden-windows", "9"]
    assert main(args) == 0, capsys.readouterr().err
    folder = repo / "cwru-fan-end" / "1.0.0"
    card = json.loads((folder / "cwru_fan_end.json").read_text())
    read = read_manifest(manifest)
    assert card["classes"] == list(read.classes)
    conditions = card["operating_conditions"]
    assert conditions["sensor"] == "fan-end accelerometer" and conditions["groups"] == ["0hp", "1hp"]
    assert all(c.endswith("_FE_time") for c in conditions["channels"])
    assert set(card["evaluation"]["held_out_groups"]["folds"]) == {"0hp", "1hp"}
    with np.load(folder / card["golden"]) as golden:
        assert len(golden["windows"]) == 9 and sorted(golden["labels"]) == list(range(9))
