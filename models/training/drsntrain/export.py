"""Shipping: ONNX export, parity check against PyTorch, model card and golden file.

The ONNX file has opset 17, IR version <= 10 (ONNX Runtime 1.31 reads at most 13), a
dynamic batch axis, input `vibration` (N x 1 x window, float32, raw samples) and outputs
`logits` (N x classes), for shrinkage networks `shrinkage` (N x units) and, when shipped with its
out-of-distribution statistics, `ood_score` (N,).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import torch

from .model import DRSN, ModelConfig

OPSET = 17
MAX_IR_VERSION = 10
INPUT_NAME = "vibration"


def save_checkpoint(model: DRSN, path: Path, extra: dict | None = None) -> None:
    torch.save({"config": model.config.to_dict(), "state": model.state_dict(), **(extra or {})}, path)


def load_checkpoint(path: Path) -> DRSN:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = DRSN(ModelConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state"])
    return model.eval()


def output_names(model: DRSN, ood: bool = False) -> list[str]:
    return ["logits"] + (["shrinkage"] if model.config.shrinkage != "none" else []) + (["ood_score"] if ood else [])


class _Logits(torch.nn.Module):
    """The plain ResNet has no shrinkage output: export its logits alone."""

    def __init__(self, model: DRSN):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def export_onnx(
    model: DRSN, path: Path, metadata: dict[str, str] | None = None, ood: torch.nn.Module | None = None
) -> None:
    """`ood`, when given, is the model wrapped with its out-of-distribution output (ood.WithOod): exported as is."""
    model = model.eval()
    names = output_names(model, ood is not None)
    if ood is not None:
        if model.config.shrinkage == "none":
            raise ValueError("the ood output is exported beside the shrinkage output: a shrinkage network is needed")
        module = ood.eval()
    else:
        module = model if len(names) == 2 else _Logits(model)
    example = torch.zeros(2, 1, model.config.window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about static shapes
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=names,
            opset_version=OPSET,
            dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]},
            dynamo=False,
        )
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def ort_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_outputs(session: ort.InferenceSession, windows: np.ndarray) -> list[np.ndarray]:
    x = np.ascontiguousarray(windows, dtype=np.float32)[:, None, :]
    return session.run(None, {INPUT_NAME: x})


def parity(model: torch.nn.Module, path: Path, windows: np.ndarray) -> dict:
    """Largest |ONNX - PyTorch| over the outputs (relative for ood_score), at several batch sizes (`model` is what was
    exported)."""
    session = ort_session(path)
    with torch.no_grad():
        ref = model(torch.from_numpy(windows).float().unsqueeze(1))
    ref = [t.numpy() for t in ref if t is not None]
    worst, argmax_equal = 0.0, True
    n = len(windows)
    for bounds in ([(0, n)], [(i, i + 1) for i in range(min(n, 3))], [(0, min(n, 7))]):
        for lo, hi in bounds:
            got = ort_outputs(session, windows[lo:hi])
            for k, (g, r) in enumerate(zip(got, ref, strict=True)):
                diff = np.abs(g - r[lo:hi])
                if k == 2:  # ood_score: a squared distance of some hundreds, compared relative to its size
                    diff = diff / np.maximum(1.0, np.abs(r[lo:hi]))
                worst = max(worst, float(diff.max()))
            argmax_equal &= bool((got[0].argmax(1) == ref[0][lo:hi].argmax(1)).all())
    return {"max_abs_diff": worst, "argmax_equal": argmax_equal}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_golden(session_path: Path, windows: np.ndarray, labels: np.ndarray, snr_db: np.ndarray, out: Path) -> None:
    """Raw windows with the logits (and shrinkage) ONNX Runtime gives for them.

    snr_db is NaN for clean windows. The Rust tests read this file.
    """
    outs = ort_outputs(ort_session(session_path), windows)
    arrays = {
        "windows": windows.astype(np.float32),
        "labels": labels.astype(np.int64),
        "snr_db": snr_db.astype(np.float32),
        "logits": outs[0].astype(np.float32),
    }
    if len(outs) > 1:
        arrays["shrinkage"] = outs[1].astype(np.float32)
    if len(outs) > 2:
        arrays["ood_score"] = outs[2].astype(np.float32)
    np.savez(out, **arrays)


# The card's schema, written once: the server's tests check the shipped card and its refusals against it too.
CARD_SCHEMA = Path(__file__).resolve().parents[2] / "card.schema.json"


def check_card(card: dict) -> None:
    """Raise jsonschema.ValidationError, naming the key, when `card` is not a card the server can read."""
    jsonschema.Draft202012Validator(json.loads(CARD_SCHEMA.read_text())).validate(card)


def write_card(path: Path, card: dict) -> None:
    check_card(card)
    path.write_text(json.dumps(card, indent=2) + "\n")
