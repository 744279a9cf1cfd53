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
