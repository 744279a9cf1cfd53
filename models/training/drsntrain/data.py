"""CWRU recordings: find them, label them, split each by time, and cut windows.

Every recording is split by time into train / validation / test segments, so no
window can straddle two segments or be shared by two. Training windows are drawn at
random offsets inside the train segment (they may overlap); evaluation windows are
cut back to back (they never overlap).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.io
import scipy.signal

# Output order of the classifier; the service and the model card use these strings.
CLASSES: tuple[str, ...] = (
    "normal",
    "inner_race_007",
    "ball_007",
    "outer_race_007",
    "inner_race_014",
    "ball_014",
    "outer_race_014",
    "inner_race_021",
    "ball_021",
    "outer_race_021",
)
SAMPLE_RATE_HZ = 12_000
# CWRU recorded its healthy baselines (normal_<load>_<num>.mat) at 48 kHz, the 12k drive-end fault files at 12 kHz
# (see the data folder's README): read at 12 kHz a baseline's shaft lines sit at a quarter of their frequency. The
# loader brings every recording to SAMPLE_RATE_HZ (band-limited polyphase filter, 1:4 for a baseline).
NORMAL_SOURCE_RATE_HZ = 48_000
# Fractions of each recording, in time order.
SPLIT = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "cwru"
DATA_DIR_ENV = "DRSN_CWRU_DIR"

_FAULTS = {"IR": "inner_race", "B": "ball", "OR": "outer_race"}
# 12 kHz drive-end fault files only; outer-race faults at @6:00 (the position CWRU recorded at every size).
_FAULT_RE = re.compile(r"^12k_Drive_End_(IR|B|OR)(\d{3})(?:@6)?_(\d)_(\d+)\.mat$")
_NORMAL_RE = re.compile(r"^normal_(\d)_(\d+)\.mat$")


class DataNotFoundError(FileNotFoundError):
    """The CWRU folder is missing or holds no recognisable recordings."""


@dataclass(frozen=True)
class Recording:
    """One drive-end channel of one CWRU file."""

    path: Path
    label: str
    load_hp: int
    file_number: int
    signal: np.ndarray  # float32, shape (n,)

    @property
    def class_index(self) -> int:
        return CLASSES.index(self.label)


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The CWRU folder: the argument, else $DRSN_CWRU_DIR, else ../shared/data/cwru."""
    if override is not None:
        return Path(override)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else DEFAULT_DATA_DIR


def parse_name(name: str) -> tuple[str, int, int] | None:
    """(label, load in hp, file number) from a CWRU 12k drive-end file name, or None."""
    m = _FAULT_RE.match(name)
    if m:
        kind, size, load, num = m.groups()
        return f"{_FAULTS[kind]}_{size}", int(load), int(num)
    m = _NORMAL_RE.match(name)
    if m:
        load, num = m.groups()
        return "normal", int(load), int(num)
    return None


def source_rate_hz(name: str) -> int:
    """The rate a CWRU file was recorded at, from its name: 48 kHz for a healthy baseline, else 12 kHz."""
    return NORMAL_SOURCE_RATE_HZ if _NORMAL_RE.match(name) else SAMPLE_RATE_HZ


def to_model_rate(signal: np.ndarray, rate_hz: int) -> np.ndarray:
    """signal, recorded at rate_hz, at SAMPLE_RATE_HZ (float32); unchanged when the rates agree."""
    if rate_hz == SAMPLE_RATE_HZ:
        return signal
    g = math.gcd(SAMPLE_RATE_HZ, rate_hz)
    out = scipy.signal.resample_poly(signal.astype(np.float64), SAMPLE_RATE_HZ // g, rate_hz // g)
    return out.astype(np.float32)


def data_settings() -> dict:
    """What the loader does to the files, stored with every run so that a run made by another loader is redone."""
    return {"sample_rate_hz": SAMPLE_RATE_HZ, "normal_source_rate_hz": NORMAL_SOURCE_RATE_HZ}


def load_drive_end(path: Path, file_number: int) -> np.ndarray:
    """The drive-end accelerometer variable (X<num>_DE_time) of a CWRU .mat file."""
    mat = scipy.io.loadmat(path)
    key = f"X{file_number:03d}_DE_time"
    if key not in mat:
        candidates = [k for k in mat if k.endswith("_DE_time")]
        if len(candidates) != 1:
            raise ValueError(f"{path}: no variable {key} and no single *_DE_time variable")
        key = candidates[0]
    return np.asarray(mat[key], dtype=np.float32).reshape(-1)


def _mat_files(root: Path) -> list[Path]:
    """Every .mat file below root, following linked folders as well as linked files (a mounted share, a fold
    made of links); a folder reached twice through links is read once."""
    seen, found = set(), []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        found += [Path(folder) / f for f in files if f.endswith(".mat")]
    return sorted(found)


def shaft_speed_rpm(path: Path, file_number: int) -> float | None:
    """The shaft speed recorded in a CWRU file (X<num>RPM), if it has one."""
    mat = scipy.io.loadmat(path)
    key = f"X{file_number:03d}RPM"
    if key not in mat:
        candidates = [k for k in mat if k.endswith("RPM")]
        if len(candidates) != 1:
            return None
        key = candidates[0]
    return float(np.asarray(mat[key]).reshape(-1)[0])


def load_recordings(directory: str | os.PathLike | None = None) -> list[Recording]:
    """Every recognisable recording below the CWRU folder, sorted by path, at SAMPLE_RATE_HZ."""
    root = data_dir(directory)
    if not root.is_dir():
        raise DataNotFoundError(
            f"CWRU data not found at {root}. Download the 12 kHz drive-end files from the CWRU "
            "Bearing Data Center (engineering.case.edu/bearingdatacenter), laid out as "
            "<dir>/<load>HP/*.mat, and pass --data-dir <dir> or set DRSN_CWRU_DIR."
        )
    recordings = []
    for path in _mat_files(root):
        parsed = parse_name(path.name)
        if parsed is None:
            continue
        label, load, num = parsed
        signal = to_model_rate(load_drive_end(path, num), source_rate_hz(path.name))
        recordings.append(Recording(path, label, load, num, signal))
    if not recordings:
        raise DataNotFoundError(f"no CWRU 12k drive-end .mat files below {root}")
    return recordings


def loads(recordings: list[Recording]) -> list[int]:
    """The operating conditions (motor loads, hp) present, sorted."""
    return sorted({r.load_hp for r in recordings})


def spread_over_loads(recordings: list[Recording]) -> list[Recording]:
    """Recordings of a class that exists at one load only (CWRU's healthy baseline, 0 hp only) are split by time
    into one part per load, part i standing in for the i-th load, so that every leave-one-load-out fold trains and
    tests on disjoint parts of it. Other recordings are returned as they are."""
    all_loads = loads(recordings)
    by_class: dict[str, set[int]] = {}
    for r in recordings:
        by_class.setdefault(r.label, set()).add(r.load_hp)
    out = []
    for r in recordings:
        if len(by_class[r.label]) > 1 or len(all_loads) < 2:
            out.append(r)
            continue
        parts = np.array_split(r.signal, len(all_loads))
        out += [replace(r, load_hp=load, signal=part) for load, part in zip(all_loads, parts, strict=True)]
    return out


def leave_one_load_out(recordings: list[Recording], test_load: int) -> tuple[list[Recording], list[Recording]]:
    """(training recordings, held-out recordings) of the fold that tests on `test_load` (see spread_over_loads)."""
    spread = spread_over_loads(recordings)
    if len(loads(spread)) < 2:
        raise DataNotFoundError(f"leave-one-load-out needs recordings at two loads or more; found {loads(spread)}")
    if test_load not in loads(spread):
        raise ValueError(f"no recordings at {test_load} hp; loads present: {loads(spread)}")
    return [r for r in spread if r.load_hp != test_load], [r for r in spread if r.load_hp == test_load]


def all_windows(recordings: list[Recording], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Back-to-back windows over the whole of every recording, with class indices."""
    xs = [contiguous_windows(r.signal, window) for r in recordings]
    ys = [np.full(len(x), r.class_index, dtype=np.int64) for x, r in zip(xs, recordings, strict=True)]
    return np.concatenate(xs), np.concatenate(ys)


def split_fractions(train: float) -> dict[str, tuple[float, float]]:
    """Time split with the first `train` of each recording for training, the next 0.2 for validation, the rest
    for test (the default is SPLIT; a leave-one-load-out fold may train on 0.8 of the loads it sees, since its
    test is another load)."""
    if not 0.2 <= train <= 0.8:
        raise ValueError(f"train fraction {train} must be between 0.2 and 0.8")
    return {"train": (0.0, train), "val": (train, train + 0.2), "test": (train + 0.2, 1.0)}


def segment_bounds(n: int, split: str, fractions: dict | None = None) -> tuple[int, int]:
    """Sample range [start, stop) of one split of an n-sample recording."""
    lo, hi = (fractions or SPLIT)[split]
    return round(n * lo), round(n * hi)


def segment(signal: np.ndarray, split: str, fractions: dict | None = None) -> np.ndarray:
    start, stop = segment_bounds(len(signal), split, fractions)
    return signal[start:stop]


def contiguous_windows(signal: np.ndarray, window: int) -> np.ndarray:
    """Back-to-back, non-overlapping windows, shape (k, window); the tail is dropped."""
    k = len(signal) // window
    return signal[: k * window].reshape(k, window)


def split_windows(
    recordings: list[Recording], split: str, window: int, fractions: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of one split of every recording, with class indices."""
    xs, ys = [], []
    for rec in recordings:
        w = contiguous_windows(segment(rec.signal, split, fractions), window)
        xs.append(w)
        ys.append(np.full(len(w), rec.class_index, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


class RandomWindows:
    """Draws overlapping training windows at random offsets inside each train segment.

    Each epoch draws about len(segment) / hop windows per recording, so recordings
    contribute in proportion to their length. With `speed` > 0 each window is resampled by a random factor in
    [1 - speed, 1 + speed] (linear interpolation), as if the shaft turned that much slower or faster: loads
    change a motor's speed, and with it every fault frequency.
    """

    def __init__(
        self, recordings: list[Recording], window: int, hop: int, speed: float = 0.0, fractions: dict | None = None
    ):
        if not 0.0 <= speed < 0.5:
            raise ValueError(f"speed perturbation {speed} must be in [0, 0.5)")
        self.window, self.speed = window, speed
        self.segments = [segment(r.signal, "train", fractions) for r in recordings]
        self.labels = [r.class_index for r in recordings]
        self.span = int(np.ceil(window * (1 + speed))) + 1  # samples a stretched window may need
        for s in self.segments:
            if len(s) < self.span:
                raise ValueError(f"a train segment of {len(s)} samples is shorter than the window of {window}")
        self.counts = [(len(s) - window) // hop + 1 for s in self.segments]

    def __len__(self) -> int:
        return sum(self.counts)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((len(self), self.window), dtype=np.float32)
        y = np.empty(len(self), dtype=np.int64)
        i = 0
        for seg, label, count in zip(self.segments, self.labels, self.counts, strict=True):
            if self.speed == 0.0:
                starts = rng.integers(0, len(seg) - self.window + 1, size=count)
                x[i : i + count] = seg[starts[:, None] + np.arange(self.window)]
            else:
                factor = rng.uniform(1 - self.speed, 1 + self.speed, size=(count, 1))
                starts = rng.integers(0, len(seg) - self.span + 1, size=(count, 1))
                pos = starts + factor * np.arange(self.window)
                i0 = pos.astype(np.int64)
                frac = (pos - i0).astype(np.float32)
                x[i : i + count] = seg[i0] * (1 - frac) + seg[i0 + 1] * frac
            y[i : i + count] = label
            i += count
        return x, y
