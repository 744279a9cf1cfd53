"""Shared fixtures: paths of the shipped model, the committed CWRU excerpt and the full data."""

import json
from pathlib import Path

import pytest

from drsntrain.data import data_dir

MODELS = Path(__file__).resolve().parents[2]
SHIPPED_CARD = MODELS / "drsn_cw_cwru.json"
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "cwru_mini"


@pytest.fixture(scope="session")
def card() -> dict:
    return json.loads(SHIPPED_CARD.read_text())


@pytest.fixture(scope="session")
def cwru_dir() -> Path:
    """The full CWRU folder; CI has it beside the clone. Without it these tests are skipped, saying why."""
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"full CWRU data not at {path}: set DRSN_CWRU_DIR (see models/training/README.md)")
    return path


def multi_load_tree(root: Path) -> Path:
    """The committed 0 hp excerpt as a CWRU tree of links: 0HP/ a linked folder, 1HP/ and 2HP/ folders of linked
    files renamed to those loads (each file's variable keeps its 0 hp number; the loader finds the one *_DE_time)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "0HP").symlink_to(FIXTURE_DIR / "0HP", target_is_directory=True)
    for load in (1, 2):
        folder = root / f"{load}HP"
        folder.mkdir()
        for f in sorted((FIXTURE_DIR / "0HP").glob("12k_*.mat")):
            stem, num = f.stem.rsplit("_", 2)[0], f.stem.rsplit("_", 1)[1]
            (folder / f"{stem}_{load}_{num}{load}.mat").symlink_to(f)
    return root
