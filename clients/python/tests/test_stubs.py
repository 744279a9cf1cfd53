"""The committed stubs are what proto/ generates today: a change to the .proto cannot leave them behind."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def test_the_committed_stubs_match_the_proto(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_stubs", HERE / "generate_stubs.py")
    generate_stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate_stubs)
    fresh = generate_stubs.generate(tmp_path)
    committed = generate_stubs.PACKAGE_DIR
    names = sorted(p.name for p in fresh.iterdir())
    assert names == ["diagnosis_pb2.py", "diagnosis_pb2.pyi", "diagnosis_pb2_grpc.py"]
    for name in names:
        assert (fresh / name).read_text() == (committed / name).read_text(), (
            f"{name} differs from proto/: run `python clients/python/generate_stubs.py`"
        )
