"""A model trained from a plant's own recordings (`drsntrain manifest`) served beside the shipped one from a model
repository: both in the repository index, the trained one answering exactly as ONNX Runtime runs its exported file
(over V2 and through the gateway library), and unloaded and loaded again with tritonclient's repository calls over
REST and gRPC."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from support import CARD, MODEL, ROOT, running
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

RATE = 4000
WINDOW = 256
TONES = {"normal": 60.0, "inner": 410.0, "outer": 730.0}
PLANT = "plant-pump"
# The smallest network drsntrain builds, trained briefly: this checks the path from recordings to a served model,
# not the accuracy a plant would get.
TINY = ["--window", str(WINDOW), "--rate", str(RATE), "--epochs", "2", "--width", "1", "--units", "1", "--stages", "2"]
TINY += ["--stem-kernel", "16", "--stem-stride", "4", "--hop", "256", "--batch", "64", "--threads", "1"]


def tone(label: str, gain: float, seed: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    return (0.25 * gain * (np.sin(2 * np.pi * TONES[label] * t) + 0.3 * rng.normal(size=len(t)))).astype(np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """The shipped model as drsn-cw-cwru/<version>/, and plant-pump/1.0.0/ trained here from a manifest of .npy files
    recorded on two lines."""
    root = tmp_path_factory.mktemp("plant")
    rows = ["path,label,group,sample_rate_hz,channel"]
    for g, (line, gain) in enumerate([("line-a", 1.0), ("line-b", 1.4)]):
        for k, label in enumerate(TONES):
            np.save(root / f"{line}-{label}.npy", tone(label, gain, 10 * g + k))
            rows.append(f"{line}-{label}.npy,{label},{line},{RATE},")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    repo = root / "repository"
    args = [sys.executable, "-m", "drsntrain", "manifest", "--manifest", str(root / "manifest.csv")]
    args += ["--repository", str(repo), "--name", PLANT, "--version", "1.0.0", *TINY]
    subprocess.run(args, cwd=ROOT / "models" / "training", check=True, capture_output=True)
    shipped = repo / MODEL / CARD["version"]
    shipped.mkdir(parents=True)
    for name in ("drsn_cw_cwru.json", CARD["onnx"], CARD["golden"]):
        (shipped / name).symlink_to(ROOT / "models" / name)
    return repo


@pytest.fixture(scope="module")
def server(repository):
    args = ["--model-repository", str(repository), "--default-model", MODEL, "--model-control", "explicit"]
    with running([*args, "--workers", "1"]) as addrs:
        yield addrs


def plant_card(repository: Path) -> dict:
    return json.loads((repository / PLANT / "1.0.0" / "plant_pump.json").read_text())


def test_the_trained_model_serves_beside_the_shipped_one_as_onnx_runtime_runs_it(repository, server):
    client = thttp.InferenceServerClient(server["http_addr"])
    index = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
    assert index == {(MODEL, CARD["version"]): "READY", (PLANT, "1.0.0"): "READY"}
    card = plant_card(repository)
    assert card["input"]["window"] == WINDOW and set(card["classes"]) == set(TONES)
    windows = np.stack([tone(label, 1.2, 99 + k, WINDOW / RATE) for k, label in enumerate(TONES)])[:, None, :]
    x = thttp.InferInput("vibration", list(windows.shape), "FP32")
    x.set_data_from_numpy(windows, binary_data=True)
    result = client.infer(PLANT, [x])
    onnx = repository / PLANT / "1.0.0" / card["onnx"]
    want = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(["logits"], {"vibration": windows})
    status = result.as_numpy("status").astype(str)
    judged = status != "invalid_signal:out_of_range"
    assert judged.any(), status
    np.testing.assert_allclose(result.as_numpy("logits")[judged], want[0][judged], rtol=1e-4, atol=1e-4)
    labels = result.as_numpy("label").astype(str)
    assert all(label in card["classes"] for label in labels[judged]), labels
    assert result.get_response()["model_name"] == PLANT


def test_the_gateway_library_streams_to_the_trained_model(server):
    from drsn_client import Client, Window

    with Client([server["grpc_addr"]]) as client, client.stream("pump-3", "de", RATE, hop=WINDOW, model=PLANT) as s:
        s.send(tone("outer", 1.0, 7, 4 * WINDOW / RATE))
        s.close()
        windows = [e for e in s if isinstance(e, Window)]
    assert [w.index for w in windows] == [0, 1, 2, 3]
    assert {w.result.model_name for w in windows} == {PLANT}


def test_a_trained_model_is_unloaded_and_loaded_again(server):
    client = thttp.InferenceServerClient(server["http_addr"])
    client.unload_model(PLANT)
    assert {m["name"] for m in client.get_model_repository_index()} == {MODEL}
    client.load_model(PLANT)
    assert client.is_model_ready(PLANT)


def test_the_repository_calls_over_grpc(server):
    client = tgrpc.InferenceServerClient(server["grpc_addr"])
    index = client.get_model_repository_index().models
    assert {(m.name, m.version, m.state) for m in index} == {
        (MODEL, CARD["version"], "READY"),
        (PLANT, "1.0.0", "READY"),
    }
    assert {m.name: m.reason.split(":")[0] for m in index} == {MODEL: "serving", PLANT: "serving"}
    client.unload_model(PLANT)
    assert not client.is_model_ready(PLANT)
    assert [m.name for m in client.get_model_repository_index().models] == [MODEL]
    client.load_model(PLANT)
    assert client.is_model_ready(PLANT)
    # A model cannot be uploaded here: refused by name, nothing changed.
    with pytest.raises(InferenceServerException) as e:
        client.load_model(PLANT, config="{}")
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "repository folder only" in e.value.message()
    # The roles as string parameters, as the REST load's: a version not loaded cannot shadow; one that is serves.
    stub = client._client_stub  # tritonclient's generated stub: load_model() sends no parameters but config and files
    ask = service_pb2.RepositoryModelLoadRequest(model_name=PLANT)
    ask.parameters["shadow"].string_param = "9.9.9"
    with pytest.raises(Exception, match="9.9.9"):
        stub.RepositoryModelLoad(ask)
    ask = service_pb2.RepositoryModelLoadRequest(model_name=PLANT)
    ask.parameters["serve"].string_param = "1.0.0"
    stub.RepositoryModelLoad(ask)
    assert client.is_model_ready(PLANT, "1.0.0")
