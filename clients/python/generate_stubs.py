"""Generates drsn_client's gRPC stubs from proto/drsn/v1/diagnosis.proto, the one source of truth.

Run from anywhere: `python clients/python/generate_stubs.py [OUT_DIR]` (default: the package's `_proto/`). The stubs
are committed so that `pip install` needs no protoc; tests/test_stubs.py fails when they differ from what this
writes, so a change to the .proto cannot leave them behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROTO_DIR = REPO / "proto" / "drsn" / "v1"
PACKAGE_DIR = HERE / "src" / "drsn_client" / "_proto"
# The .proto is mapped into the package's import path, so the generated modules import each other as
# `drsn_client._proto.*` and never need a top-level `drsn` package.
IMPORT_PATH = "drsn_client/_proto"


def generate(out_root: Path) -> Path:
    """Writes the stubs under out_root/drsn_client/_proto/ and returns that folder."""
    args = [
        "grpc_tools.protoc",
        f"-I{IMPORT_PATH}={PROTO_DIR}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"{IMPORT_PATH}/diagnosis.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return out_root / IMPORT_PATH


if __name__ == "__main__":
    if len(sys.argv) > 1:
        generate(Path(sys.argv[1]))
    else:
        generate(PACKAGE_DIR.parents[1])
