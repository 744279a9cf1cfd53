"""Write a drsntrain manifest of the CWRU fan-end accelerometer: a second sensor position of the same rig, trained as
a plant would train on its own recordings (`python -m drsntrain manifest`), not through the CWRU loader.

One row per 12 kHz fault recording (<load>HP/12k_Drive_End_<fault><size>[@6]_<load>_<num>.mat): its fan-end variable
(the one ending in `_FE_time`, read from the file), the shipped model's class name (`inner_race_007`, `ball_014`,
`outer_race_021`, ...), the load as the group (`0hp`, `1hp`, `2hp`) and 12000 Hz. Paths are written relative to the
manifest's folder, as the manifest reader resolves them.

The healthy baseline (0HP/normal_0_97.mat) is left out: it is the only healthy recording, at 0 hp only, and leave one
group out refuses a label recorded in one group (holding out 0 hp would leave none of it to train on). The model
trained on this manifest therefore knows the nine faults only: a demonstration of a second sensor position, not a
model to deploy as it is.

    python examples/cwru_fan_end.py --out runs/cwru-fan-end/manifest.csv [--cwru ../../../shared/data/cwru]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from pathlib import Path

import scipy.io

# The repository convention (drsntrain.data.DEFAULT_DATA_DIR): the data beside the clone.
DEFAULT_CWRU = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "cwru"
RATE_HZ = 12000
FAULTS = {"IR": "inner_race", "B": "ball", "OR": "outer_race"}
# CWRU's 12 kHz fault files: fault kind, size in mils, outer race centred @6:00, load, file number.
FAULT_FILE = re.compile(r"^12k_Drive_End_(IR|B|OR)(\d{3})(?:@6)?_(\d)_(\d+)\.mat$")
LOAD_FOLDER = re.compile(r"^(\d)HP$")
FAN_END_SUFFIX = "_FE_time"


def fan_end_variable(path: Path) -> str:
    """The file's one variable ending in _FE_time, found from its header (no samples read)."""
    names = [name for name, _, _ in scipy.io.whosmat(path) if name.endswith(FAN_END_SUFFIX)]
    if len(names) != 1:
        raise ValueError(f"{path}: {len(names)} variables ending in {FAN_END_SUFFIX}, expected one")
    return names[0]


def manifest_rows(cwru: Path, manifest_dir: Path) -> list[dict[str, str]]:
    """Every fault recording's fan-end row, sorted by group then file name."""
    rows = []
    for folder in sorted(p for p in cwru.iterdir() if p.is_dir() and LOAD_FOLDER.match(p.name)):
        load = LOAD_FOLDER.match(folder.name).group(1)
        for path in sorted(folder.glob("*.mat")):
            m = FAULT_FILE.match(path.name)
            if m is None:  # the healthy baseline and anything else: see the module's docstring
                continue
            kind, size, file_load, _ = m.groups()
            if file_load != load:
                raise ValueError(f"{path}: named for {file_load} hp but in the {folder.name} folder")
            rows.append(
                {
                    "path": relative(path, manifest_dir),
                    "label": f"{FAULTS[kind]}_{size}",
                    "group": f"{load}hp",
                    "sample_rate_hz": str(RATE_HZ),
                    "channel": fan_end_variable(path),
                }
            )
    if not rows:
        raise ValueError(f"{cwru}: no CWRU 12 kHz fault recordings in <load>HP/ folders")
    return rows


def relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive (Windows): the reader takes absolute paths too
        return path.resolve().as_posix()


def write_manifest(cwru: Path, out: Path) -> list[dict[str, str]]:
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = manifest_rows(cwru, out.parent)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group", "sample_rate_hz", "channel"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cwru", type=Path, default=DEFAULT_CWRU, help=f"the CWRU folder (default {DEFAULT_CWRU})")
    parser.add_argument("--out", type=Path, required=True, help="the manifest CSV to write")
    args = parser.parse_args(argv)
    if not args.cwru.is_dir():
        print(f"error: no CWRU folder at {args.cwru} (--cwru)", file=sys.stderr)
        return 2
    try:
        rows = write_manifest(args.cwru, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    groups = sorted({r["group"] for r in rows})
    print(f"{args.out}: {len(rows)} fan-end recordings, groups {', '.join(groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
