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
from fractions import Fraction
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
    # The accelerometer: "DE" (drive end, what the model serves) or "FE" (fan end: the healthy baseline's second
    # channel, extra healthy signal for training only, never tested on).
    channel: str = "DE"

    @property
    def train_only(self) -> bool:
        return self.channel != "DE"

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
    return resample(signal, rate_hz, SAMPLE_RATE_HZ)


# Largest up or down factor of a rate change: finer ratios (e.g. 12000 <-> 12001 Hz) make a filter of millions of taps.
MAX_RESAMPLE_FACTOR = 10_000


def resample_ratio(rate_hz: float, target_hz: float) -> tuple[int, int]:
    """(up, down) of the exact rational rate change rate_hz -> target_hz, in lowest terms."""
    ratio = Fraction(str(target_hz)) / Fraction(str(rate_hz))
    up, down = ratio.numerator, ratio.denominator
    if max(up, down) > MAX_RESAMPLE_FACTOR:
        raise ValueError(
            f"resampling {rate_hz:g} Hz to {target_hz:g} Hz needs the ratio {up}/{down}: too fine for a polyphase "
            f"filter (factors up to {MAX_RESAMPLE_FACTOR}); choose a model rate closer to a simple ratio"
        )
    return up, down


def resample(signal: np.ndarray, rate_hz: float, target_hz: float) -> np.ndarray:
    """signal, recorded at rate_hz, at target_hz (float32), band-limited (polyphase filter with its anti-aliasing
    low-pass); unchanged when the rates agree."""
    if rate_hz == target_hz:
        return signal
    up, down = resample_ratio(rate_hz, target_hz)
    return scipy.signal.resample_poly(signal.astype(np.float64), up, down).astype(np.float32)


def data_settings() -> dict:
    """What the loader does to the files, stored with every run so that a run made by another loader is redone."""
    return {"sample_rate_hz": SAMPLE_RATE_HZ, "normal_source_rate_hz": NORMAL_SOURCE_RATE_HZ}


def load_drive_end(path: Path, file_number: int, channel: str = "DE") -> np.ndarray | None:
    """The drive-end accelerometer variable (X<num>_DE_time) of a CWRU .mat file (or another channel's, e.g. "FE";
    None when the file has no such channel)."""
    mat = scipy.io.loadmat(path)
    key = f"X{file_number:03d}_{channel}_time"
    if key not in mat:
        candidates = [k for k in mat if k.endswith(f"_{channel}_time")]
        if len(candidates) != 1:
            if channel != "DE":
                return None
            raise ValueError(f"{path}: no variable {key} and no single *_{channel}_time variable")
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


def load_recordings(directory: str | os.PathLike | None = None, extra_healthy: bool = False) -> list[Recording]:
    """Every recognisable recording below the CWRU folder, sorted by path, at SAMPLE_RATE_HZ. With `extra_healthy`,
    a healthy baseline's fan-end channel follows its drive-end one as a training-only recording: at the true rate
    the baseline is about 5 s (seven 8192-sample windows), too little healthy signal to learn `normal` from."""
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
        rate = source_rate_hz(path.name)
        recordings.append(Recording(path, label, load, num, to_model_rate(load_drive_end(path, num), rate)))
        fan_end = load_drive_end(path, num, "FE") if extra_healthy and label == "normal" else None
        if fan_end is not None:
            recordings.append(Recording(path, label, load, num, to_model_rate(fan_end, rate), channel="FE"))
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
    """(training recordings, held-out recordings) of the fold that tests on `test_load` (see spread_over_loads).
    Held-out recordings are the ones a model is tested on: training-only channels are left out of them."""
    return hold_out_loads(recordings, [test_load])


def train_on_one_load(recordings: list[Recording], train_load: int) -> tuple[list[Recording], list[Recording]]:
    """(training recordings, held-out recordings) of the fold that trains on `train_load` alone and tests on every
    other load: the hardest extrapolation the data allows."""
    others = [load for load in loads(spread_over_loads(recordings)) if load != train_load]
    return hold_out_loads(recordings, others)


def hold_out_loads(recordings: list[Recording], test_loads: list[int]) -> tuple[list[Recording], list[Recording]]:
    spread = spread_over_loads(recordings)
    present = loads(spread)
    if len(present) < 2:
        raise DataNotFoundError(f"leaving loads out needs recordings at two loads or more; found {present}")
    for load in test_loads:
        if load not in present:
            raise ValueError(f"no recordings at {load} hp; loads present: {present}")
    if not set(present) - set(test_loads):
        raise ValueError(f"holding out {test_loads} leaves no load to train on")
    train = [r for r in spread if r.load_hp not in test_loads]
    return train, [r for r in spread if r.load_hp in test_loads and not r.train_only]


def extrapolates(test_loads: list[int], train_loads: list[int]) -> bool:
    """Whether a held-out set lies outside the loads trained on (below their least or above their greatest)."""
    return any(t < min(train_loads) or t > max(train_loads) for t in test_loads)


def all_windows(
    recordings: list[Recording], window: int, hop: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows over the whole of every recording, back to back or every `hop` samples (overlapping, hence
    correlated: see independent_windows), with class indices and the index of the recording each came from."""
    xs = [sliding_windows(r.signal, window, hop or window) for r in recordings]
    ys = [np.full(len(x), r.class_index, dtype=np.int64) for x, r in zip(xs, recordings, strict=True)]
    src = [np.full(len(x), i, dtype=np.int64) for i, x in enumerate(xs)]
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(src)


def sliding_windows(signal: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Windows every `hop` samples, shape (k, window); the tail that does not fill a window is dropped."""
    if len(signal) < window:
        return np.empty((0, window), dtype=signal.dtype)
    k = (len(signal) - window) // hop + 1
    return np.lib.stride_tricks.sliding_window_view(signal, window)[::hop][:k].copy()


def independent_windows(n_windows: int, window: int, hop: int) -> float:
    """How many non-overlapping windows n overlapping ones (every `hop` samples) are worth: the sample count they
    span over the window. A confidence interval counts these, not the overlapping windows."""
    if n_windows == 0:
        return 0.0
    return ((n_windows - 1) * hop + window) / window


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
    """Non-overlapping windows of one split of every recording a model is tested on, with class indices."""
    xs, ys = [], []
    for rec in recordings:
        if rec.train_only:
            continue
        w = contiguous_windows(segment(rec.signal, split, fractions), window)
        xs.append(w)
        ys.append(np.full(len(w), rec.class_index, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


# Speed factors of the band-limited perturbation: every +-1% step of the asked range (0.96 ... 1.04 for 4%).
SPEED_STEP = 0.01
SPEED_METHODS = ("polyphase", "linear")


def speed_factors(speed: float) -> list[float]:
    """The discrete speed factors of a +-`speed` perturbation (1.0 excluded: that share is left unresampled)."""
    k = round(speed / SPEED_STEP)
    return [1 + SPEED_STEP * i for i in range(-k, k + 1) if i != 0]


def change_speed(signal: np.ndarray, factor: float) -> np.ndarray:
    """signal as if the shaft turned `factor` times as fast: every frequency times `factor`, band-limited
    (polyphase resampling with its anti-aliasing filter, so the spectrum keeps its shape up to Nyquist)."""
    up, down = 100, round(100 * factor)
    g = math.gcd(up, down)
    return scipy.signal.resample_poly(signal.astype(np.float64), up // g, down // g).astype(np.float32)


class RandomWindows:
    """Draws overlapping training windows at random offsets inside each train segment.

    Each epoch draws about len(segment) / hop windows per recording, so recordings contribute in proportion to
    their length; with `balance`, a class with less signal (the healthy baseline) has its windows drawn more densely
    until it contributes as many windows as the largest class. With `speed` > 0, all but `raw_share` of the windows
    are taken at a random speed factor in [1 - speed, 1 + speed], as if the shaft turned that much slower or faster
    (loads change a motor's speed, and with it every fault frequency). "polyphase" resamples each train segment
    once per factor, band-limited, so a resampled window has the spectrum a real window of that speed would have;
    "linear" (model 2.0.0's) interpolates each window, which low-passes it: a fingerprint served windows lack.
    """

    def __init__(
        self,
        recordings: list[Recording],
        window: int,
        hop: int,
        speed: float = 0.0,
        fractions: dict | None = None,
        method: str = "polyphase",
        raw_share: float = 0.0,
        balance: bool = False,
    ):
        if not 0.0 <= speed < 0.5:
            raise ValueError(f"speed perturbation {speed} must be in [0, 0.5)")
        if method not in SPEED_METHODS:
            raise ValueError(f"speed method {method!r} is not one of {SPEED_METHODS}")
        if not 0.0 <= raw_share <= 1.0:
            raise ValueError(f"raw share {raw_share} must be in [0, 1]")
        self.window, self.speed, self.method = window, speed, method
        self.raw_share = raw_share if speed > 0 else 1.0
        self.segments = [segment(r.signal, "train", fractions) for r in recordings]
        self.labels = [r.class_index for r in recordings]
        self.span = int(np.ceil(window * (1 + speed))) + 1  # samples a linearly stretched window may need
        for s in self.segments:
            if len(s) < self.span:
                raise ValueError(f"a train segment of {len(s)} samples is shorter than the window of {window}")
        self.counts = [(len(s) - window) // hop + 1 for s in self.segments]
        if balance:
            totals: dict[int, int] = {}
            for label, count in zip(self.labels, self.counts, strict=True):
                totals[label] = totals.get(label, 0) + count
            target = max(totals.values())
            self.counts = [round(c * target / totals[lab]) for lab, c in zip(self.labels, self.counts, strict=True)]
        self.factors = speed_factors(speed) if speed > 0 and method == "polyphase" else []
        self.banks = [[change_speed(s, f) for f in self.factors] for s in self.segments]
        for bank in self.banks:
            for resampled in bank:
                if len(resampled) < window:
                    raise ValueError(f"a resampled train segment of {len(resampled)} samples is shorter than {window}")

    def __len__(self) -> int:
        return sum(self.counts)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((len(self), self.window), dtype=np.float32)
        y = np.empty(len(self), dtype=np.int64)
        i = 0
        for seg, bank, label, count in zip(self.segments, self.banks, self.labels, self.counts, strict=True):
            raw = rng.random(count) < self.raw_share
            out = x[i : i + count]
            n_raw = int(raw.sum())
            starts = rng.integers(0, len(seg) - self.window + 1, size=(n_raw, 1))
            out[raw] = seg[starts + np.arange(self.window)]
            moved = np.flatnonzero(~raw)
            if len(moved) and self.method == "linear":
                factor = rng.uniform(1 - self.speed, 1 + self.speed, size=(len(moved), 1))
                starts = rng.integers(0, len(seg) - self.span + 1, size=(len(moved), 1))
                pos = starts + factor * np.arange(self.window)
                i0 = pos.astype(np.int64)
                frac = (pos - i0).astype(np.float32)
                out[moved] = seg[i0] * (1 - frac) + seg[i0 + 1] * frac
            elif len(moved):
                which = rng.integers(0, len(bank), size=len(moved))
                for j, b in zip(moved, which, strict=True):
                    src = bank[b]
                    start = rng.integers(0, len(src) - self.window + 1)
                    out[j] = src[start : start + self.window]
            y[i : i + count] = label
            i += count
        return x, y
