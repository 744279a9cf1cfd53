"""A plant's own recordings, listed in a CSV manifest: read, checked, brought to the model's rate and cut into
leave-one-group-out folds.

The manifest has a header row and one row per recording:

    path            the file, relative to the manifest's folder: .wav, .csv, .npy or .mat
    label           its class; `normal` or `healthy` (any case) is the first class, the others follow sorted
    group           what a fold holds out: a machine, a load, a speed, a day of recording ...
    sample_rate_hz  the rate it was recorded at
    channel         optional: the column (.csv, .npy 2-D: index; .csv with a header: index or name), the channel
                    index (.wav) or the variable name (.mat, default: the single variable ending in `_DE_time`)

Every error names the manifest, the line and the file, and says what to change.
"""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import scipy.io.wavfile

from .data import resample, resample_ratio

COLUMNS = ("path", "label", "group", "sample_rate_hz", "channel")
REQUIRED = COLUMNS[:4]
EXTENSIONS = (".wav", ".csv", ".npy", ".mat")
# Labels that name the healthy machine: the first class, as `normal` is for CWRU.
HEALTHY_LABELS = ("normal", "healthy")
# The time split (60/20/20) cuts a test window from the last fifth of a recording: five windows at least.
MIN_WINDOWS = 5
# The .mat variable read when the row names none (CWRU's drive-end accelerometer: X097_DE_time, ...).
MAT_DEFAULT_SUFFIX = "_DE_time"


class ManifestError(ValueError):
    """The manifest, or a recording it lists, cannot be trained on; the message names the file and line."""


@dataclass(frozen=True)
class Row:
    manifest: Path
    line: int
    path: Path  # resolved against the manifest's folder
    name: str  # as written in the manifest
    label: str
    group: str
    sample_rate_hz: float
    channel: str | None

    def where(self) -> str:
        return f"{self.manifest}:{self.line}: {self.name}"

    def error(self, message: str) -> ManifestError:
        return ManifestError(f"{self.where()}: {message}")

    def describe(self) -> dict:
        return {
            "path": self.name,
            "label": self.label,
            "group": self.group,
            "sample_rate_hz": self.sample_rate_hz,
            "channel": self.channel,
        }


@dataclass(frozen=True)
class Manifest:
    path: Path
    rows: tuple[Row, ...]
    classes: tuple[str, ...]
    groups: tuple[str, ...]
    sha256: str

    def rates(self) -> list[float]:
        return sorted({r.sample_rate_hz for r in self.rows})


@dataclass(frozen=True)
class PlantRecording:
    """One row's signal at the model's rate. It carries what the training, evaluation, calibration and
    out-of-distribution code reads of a data.Recording (signal, class_index, train_only, label, path)."""

    row: Row
    class_index: int
    signal: np.ndarray  # float32, shape (n,), at the model's rate
    train_only: bool = False

    @property
    def label(self) -> str:
        return self.row.label

    @property
    def group(self) -> str:
        return self.row.group

    @property
    def path(self) -> Path:
        return self.row.path


def order_classes(labels) -> tuple[str, ...]:
    """Sorted unique labels, a healthy one (`normal`, `healthy`) first."""
    unique = sorted(set(labels))
    healthy = [lab for lab in unique if lab.lower() in HEALTHY_LABELS]
    return tuple(healthy + [lab for lab in unique if lab not in healthy])


def _rate(text: str, where: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise ManifestError(f"{where}: sample_rate_hz {text!r} is not a number") from None
    if not (math.isfinite(rate) and rate > 0):
        raise ManifestError(f"{where}: sample_rate_hz {text!r} must be a positive rate in Hz")
    return int(rate) if rate.is_integer() else rate


def read_manifest(path: str | Path) -> Manifest:
    """The manifest's rows, checked one by one (columns, file present, known extension, rate, duplicates); the
    signals are read by load_signals."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.reader(text.splitlines(), skipinitialspace=True)
    header = None
    rows: list[Row] = []
    seen: dict[tuple[Path, str | None], int] = {}
    for cells in reader:
        line = reader.line_num
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if header is None:
            header = [c.lower() for c in cells]
            unknown = [c for c in header if c not in COLUMNS]
            missing = [c for c in REQUIRED if c not in header]
            if unknown or missing or len(set(header)) != len(header):
                raise ManifestError(
                    f"{path}:{line}: the header must name the columns {','.join(REQUIRED)} and optionally channel; "
                    f"it has {','.join(header)}"
                    + (f" (missing: {', '.join(missing)})" if missing else "")
                    + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                )
            continue
        if len(cells) != len(header):
            raise ManifestError(f"{path}:{line}: {len(cells)} cells where the header has {len(header)}")
        cell = dict(zip(header, cells, strict=True))
        name = cell["path"]
        where = f"{path}:{line}: {name or '(no path)'}"
        for column in ("path", "label", "group"):
            if not cell[column]:
                raise ManifestError(f"{where}: empty {column}")
        file = (path.parent / name).resolve()
        if file.suffix.lower() not in EXTENSIONS:
            raise ManifestError(
                f"{where}: unknown extension {file.suffix or '(none)'!r}; readable: {', '.join(EXTENSIONS)}"
            )
        if not file.is_file():
            raise ManifestError(f"{where}: no such file ({file})")
        channel = cell.get("channel") or None
        key = (file, channel)
        if key in seen:
            raise ManifestError(
                f"{where}: listed twice (lines {seen[key]} and {line}): the same samples would be trained and tested on"
            )
        seen[key] = line
        rate = _rate(cell["sample_rate_hz"], where)
        rows.append(Row(path, line, file, name, cell["label"], cell["group"], rate, channel))
    if header is None or not rows:
        raise ManifestError(f"{path}: no recordings (a header row {','.join(COLUMNS)}, then one row per recording)")
    return Manifest(
        path=path,
        rows=tuple(rows),
        classes=order_classes(r.label for r in rows),
        groups=tuple(sorted({r.group for r in rows})),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def check_protocol(manifest: Manifest, folds: bool = True) -> None:
    """What the evaluation protocol needs: two labels or more, and for leave-one-group-out two groups or more with
    every label recorded in two groups or more (else a fold would have none of it to train on)."""
    if len(manifest.classes) < 2:
        raise ManifestError(f"{manifest.path}: one label only ({manifest.classes[0]}): a classifier needs two or more")
    if not folds:
        return
    if len(manifest.groups) < 2:
        raise ManifestError(
            f"{manifest.path}: one group only ({manifest.groups[0]}): leave-one-group-out needs two groups or more "
            "(recordings of other machines, loads, speeds or days); or train on the time split alone (--no-folds)"
        )
    for label in manifest.classes:
        rows = [r for r in manifest.rows if r.label == label]
        groups = sorted({r.group for r in rows})
        if len(rows) == 1:
            raise ManifestError(
                f"{rows[0].where()}: label {label!r} has one recording only: leave-one-group-out needs it in two "
                "groups or more (or --no-folds)"
            )
        if len(groups) == 1:
            lines = ", ".join(str(r.line) for r in rows)
            raise ManifestError(
                f"{manifest.path}: label {label!r} is recorded in group {groups[0]!r} only (lines {lines}): holding "
                "that group out leaves none of it to train on; record it in two groups or more (or --no-folds)"
            )


def _index(row: Row, count: int, what: str) -> int:
    try:
        i = int(row.channel)
    except ValueError:
        raise row.error(f"channel {row.channel!r} is not a {what} index (0 to {count - 1})") from None
    if not 0 <= i < count:
        raise row.error(f"no {what} {i}: it has {count} ({what} 0 to {count - 1})")
    return i


def _column(row: Row, data: np.ndarray, names: list[str] | None = None) -> np.ndarray:
    """One column of a (samples, columns) array, as the row's channel names it."""
    if data.ndim == 1:
        data = data[:, None]
    count = data.shape[1]
    if row.channel is None:
        if count != 1:
            listed = f" ({', '.join(names)})" if names else ""
            raise row.error(f"{count} columns{listed}: set the manifest's channel to the column to read")
        return data[:, 0]
    if names and row.channel in names:
        return data[:, names.index(row.channel)]
    if names and not row.channel.lstrip("-").isdigit():
        raise row.error(f"no column {row.channel!r}; the header names {', '.join(names)}")
    return data[:, _index(row, count, "column")]


def _read_wav(row: Row) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # chunks scipy skips (LIST, bext, ...)
            rate, data = scipy.io.wavfile.read(row.path)
    except (ValueError, OSError) as e:
        raise row.error(f"not a WAV file scipy can read: {e}") from None
    if not math.isclose(rate, row.sample_rate_hz):
        raise row.error(f"the file says {rate} Hz, the manifest {row.sample_rate_hz:g} Hz: correct sample_rate_hz")
    if data.ndim == 2:
        if row.channel is None and data.shape[1] != 1:
            raise row.error(f"{data.shape[1]} channels: set the manifest's channel to the channel index to read")
        data = data[:, 0 if row.channel is None else _index(row, data.shape[1], "channel")]
    # PCM scaled to full scale +-1 (scipy returns 24-bit samples left-justified in int32); float WAV as stored.
    if data.dtype == np.uint8:
        return (data.astype(np.float64) - 128.0) / 128.0
    if data.dtype.kind == "i":
        return data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    return data.astype(np.float64)


def _read_csv(row: Row) -> np.ndarray:
    lines = [ln for ln in row.path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    if not lines:
        raise row.error("an empty file")
    first = lines[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first), None)
    cells = [c.strip() for c in (first.split(delimiter) if delimiter else first.split())]
    try:
        [float(c) for c in cells]
        names = None
    except ValueError:
        names = [c.strip('"') for c in cells]
    body = lines[1:] if names else lines
    try:
        data = np.loadtxt(body, delimiter=delimiter, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise row.error(f"not numeric: {e}") from None
    if data.size == 0:
        raise row.error("no samples")
    return _column(row, data, names)


def _read_npy(row: Row) -> np.ndarray:
    try:
        data = np.load(row.path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise row.error(f"not a .npy array numpy can read: {e}") from None
    if data.dtype.kind not in "iuf":
        raise row.error(f"dtype {data.dtype} is not numeric samples")
    if data.ndim not in (1, 2):
        raise row.error(f"shape {data.shape}: expected (samples,) or (samples, columns)")
    return _column(row, data.astype(np.float64))


def _read_mat(row: Row) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(row.path)
    except NotImplementedError:
        raise row.error("a MATLAB v7.3 (HDF5) file: save it with -v7 (or as .npy)") from None
    except (ValueError, OSError) as e:
        raise row.error(f"not a .mat file scipy can read: {e}") from None
    variables = sorted(k for k in mat if not k.startswith("__"))
    if row.channel is None:
        candidates = [k for k in variables if k.endswith(MAT_DEFAULT_SUFFIX)]
        if len(candidates) != 1:
            raise row.error(
                f"{len(candidates)} variables ending in {MAT_DEFAULT_SUFFIX} (it has {', '.join(variables)}): set the "
                "manifest's channel to the variable to read"
            )
        key = candidates[0]
    elif row.channel in variables:
        key = row.channel
    else:
        raise row.error(f"no variable {row.channel!r}; it has {', '.join(variables) or 'none'}")
    value = np.asarray(mat[key])
    if value.dtype.kind not in "iuf" or value.squeeze().ndim != 1:
        raise row.error(f"variable {key} ({value.dtype}, shape {value.shape}) is not a vector of samples")
    return value.reshape(-1).astype(np.float64)


READERS = {".wav": _read_wav, ".csv": _read_csv, ".npy": _read_npy, ".mat": _read_mat}


def read_signal(row: Row) -> np.ndarray:
    """The row's samples as recorded (float64), finite."""
    signal = READERS[row.path.suffix.lower()](row)
    bad = ~np.isfinite(signal)
    if bad.any():
        raise row.error(
            f"{int(bad.sum())} non-finite samples (NaN or infinite; the first at sample {int(np.argmax(bad))}): "
            "cut them out or drop the recording"
        )
    return signal


def load_signals(manifest: Manifest, rate_hz: float, window: int) -> list[PlantRecording]:
    """Every row's signal at rate_hz (band-limited resampling where its rate differs), at least MIN_WINDOWS windows
    long."""
    out = []
    for row in manifest.rows:
        signal = read_signal(row)
        if row.sample_rate_hz != rate_hz:
            try:
                resample_ratio(row.sample_rate_hz, rate_hz)
            except ValueError as e:
                raise row.error(str(e)) from None
            signal = resample(signal, row.sample_rate_hz, rate_hz)
        if len(signal) < MIN_WINDOWS * window:
            raise row.error(
                f"{len(signal)} samples at {rate_hz:g} Hz ({len(signal) / rate_hz:.2f} s): shorter than {MIN_WINDOWS} "
                f"windows of {window} ({MIN_WINDOWS * window} samples), the least the 60/20/20 time split cuts a test "
                "window from; record longer or use a shorter --window"
            )
        out.append(PlantRecording(row, manifest.classes.index(row.label), signal.astype(np.float32)))
    return out


def leave_one_group_out(
    recordings: list[PlantRecording], group: str
) -> tuple[list[PlantRecording], list[PlantRecording]]:
    """(training recordings, held-out recordings) of the fold that tests on every window of `group`."""
    held = [r for r in recordings if r.group == group]
    if not held:
        raise ManifestError(f"no recordings in group {group!r}")
    train = [r for r in recordings if r.group != group]
    if not train:
        raise ManifestError(f"holding out group {group!r} leaves nothing to train on")
    return train, held
