"""The committed model repository (`models/repository`): the CWRU fan-end model in two versions (trained from a
manifest of the fan-end accelerometer, 1.1.0 fine-tuned from the shipped checkpoint; models/training/README.md) is
loaded into a running server beside the shipped drive-end model, so two models and two versions of one serve at once;
each fan-end version answers its golden windows as ONNX Runtime ran them, and 1.1.0 shadows 1.0.0 on the same
windows. With the CWRU data beside the clone, the fan-end channel of real recordings streams through the gateway
library to the fan-end model."""

import json
import sys
import time
import urllib.request

import numpy as np
import pytest
import scipy.io
import tritonclient.http as thttp
from support import CARD, MODEL, ROOT, running

REPOSITORY = ROOT / "models" / "repository"
FAN = "cwru-fan-end"
VERSIONS = sorted(p.name for p in (REPOSITORY / FAN).iterdir() if p.is_dir() and not p.name.startswith("."))
CWRU = ROOT.parent / "shared" / "data" / "cwru"


def card(version: str) -> dict:
    return json.loads((REPOSITORY / FAN / version / "cwru_fan_end.json").read_text())


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """A repository holding the shipped model only, as the committed one lays it out; the fan-end model is added
    while the server runs."""
    root = tmp_path_factory.mktemp("repository")
    (root / MODEL).mkdir()
    version = root / MODEL / CARD["version"]
    version.symlink_to(REPOSITORY / MODEL / CARD["version"], target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def server(repository):
    args = ["--model-repository", str(repository), "--default-model", MODEL, "--model-control", "explicit"]
    with running([*args, "--workers", "1"]) as addrs:
        yield addrs


def post(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://{server['http_addr']}{path}", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def infer(server, model: str, windows: np.ndarray, version: str = "") -> thttp.InferResult:
    """`windows` [N, samples] through V2 (binary tensors) to `model`, at `version` (empty: its serving one)."""
    x = thttp.InferInput("vibration", [len(windows), 1, windows.shape[1]], "FP32")
    x.set_data_from_numpy(windows.astype(np.float32)[:, None, :], binary_data=True)
    return thttp.InferenceServerClient(server["http_addr"]).infer(model, [x], model_version=version)


def tally(server, candidate: str, n: int) -> dict:
    """The candidate's shadow tally once it accounts for `n` windows (or after 5 s)."""
    for _ in range(100):
        shadow = next(e["shadow"] for e in post(server, "/v2/repository/index", {}) if e["version"] == candidate)
        if sum(shadow[k] for k in ("agree", "disagree", "unscored", "skipped")) >= n:
            break
        time.sleep(0.05)
    return shadow


def test_the_fan_end_model_loads_into_a_running_server_beside_the_shipped_one(repository, server):
    assert len(VERSIONS) >= 2, VERSIONS
    client = thttp.InferenceServerClient(server["http_addr"])
    assert [(m["name"], m["state"]) for m in client.get_model_repository_index()] == [(MODEL, "READY")]
    (repository / FAN).symlink_to(REPOSITORY / FAN, target_is_directory=True)
    client.load_model(FAN)
    index = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
    assert index == {(MODEL, CARD["version"]): "READY"} | {(FAN, v): "READY" for v in VERSIONS}
    for version in VERSIONS:
        c = card(version)
        assert c["operating_conditions"]["sensor"] == "fan-end accelerometer", c["operating_conditions"]
        golden = np.load(REPOSITORY / FAN / version / c["golden"])
        result = infer(server, FAN, golden["windows"], version)
        assert result.get_response()["model_version"] == version
        status = result.as_numpy("status").astype(str)
        assert (status != "invalid_signal:out_of_range").all(), status
        np.testing.assert_allclose(result.as_numpy("logits"), golden["logits"], rtol=1e-4, atol=1e-4)
        labels = result.as_numpy("label").astype(str)
        assert list(labels) == [c["classes"][i] for i in golden["logits"].argmax(1)]


def test_the_fine_tuned_version_shadows_the_first_on_the_same_windows(server):
    first, candidate = VERSIONS[0], VERSIONS[-1]
    roles = post(server, f"/v2/repository/models/{FAN}/load", {"parameters": {"serve": first, "shadow": candidate}})
    assert f"version {candidate} shadows it" in roles["result"], roles
    # V2 windows that name no version reach the serving version, and its shadow scores them when there is room.
    golden = np.load(REPOSITORY / FAN / first / card(first)["golden"])
    windows = golden["windows"]
    assert infer(server, FAN, windows).get_response()["model_version"] == first
    shadow = tally(server, candidate, len(windows))
    print(f"fan-end {candidate} shadowing {first} on {len(windows)} golden windows: {shadow}")
    assert shadow["of"] == first and shadow["agree"] + shadow["disagree"] >= 1, shadow
    assert sum(shadow[k] for k in ("agree", "disagree", "unscored", "skipped")) == len(windows), shadow


def test_the_fan_end_model_shadows_the_drive_end_model_on_its_windows(repository, server):
    """The same network file as a candidate version of the shipped model: it scores the drive-end windows the
    shipped version serves, and the two are compared by class name (the candidate never says `normal`)."""
    candidate = repository / MODEL / "3.0.0"
    candidate.mkdir()
    fan = card(VERSIONS[0])
    for name in (fan["onnx"], fan["golden"]):
        (candidate / name).symlink_to(REPOSITORY / FAN / VERSIONS[0] / name)
    (candidate / "cwru_fan_end.json").write_text(json.dumps(fan | {"name": MODEL, "version": "3.0.0"}))
    roles = {"serve": CARD["version"], "shadow": "3.0.0"}
    loaded = post(server, f"/v2/repository/models/{MODEL}/load", {"parameters": roles})
    assert "version 3.0.0 shadows it" in loaded["result"], loaded
    golden = np.load(ROOT / "models" / CARD["golden"])
    windows = golden["windows"]
    assert infer(server, MODEL, windows).get_response()["model_version"] == CARD["version"]
    shadow = tally(server, "3.0.0", len(windows))
    print(f"fan-end model shadowing the drive-end model on {len(windows)} golden windows: {shadow}")
    assert sum(shadow[k] for k in ("agree", "disagree", "unscored", "skipped")) == len(windows), shadow
    assert shadow["agree"] + shadow["disagree"] >= 1, shadow
    post(server, f"/v2/repository/models/{MODEL}/load", {"parameters": {"shadow": "none"}})


def fan_end_test_segments() -> list[tuple[str, str, np.ndarray]]:
    """(file, label, the last fifth of its fan-end channel) for each row of the manifest the model was trained from:
    the part of each recording the written model's time split held out for testing."""
    sys.path.insert(0, str(ROOT / "models" / "training" / "examples"))
    from cwru_fan_end import manifest_rows

    rows = []
    for row in manifest_rows(CWRU, CWRU):
        x = scipy.io.loadmat(CWRU / row["path"])[row["channel"]].ravel().astype(np.float32)
        rows.append((row["path"], row["label"], x[len(x) * 4 // 5 :]))
    return rows


@pytest.mark.skipif(not CWRU.is_dir(), reason=f"the CWRU data is not at {CWRU}")
def test_real_fan_end_recordings_stream_to_the_fan_end_model(server):
    from drsn_client import Client, Window

    rate = CARD["input"]["sample_rate_hz"]
    right = total = 0
    with Client([server["grpc_addr"]]) as client:
        for n, (name, label, samples) in enumerate(fan_end_test_segments()):
            with client.stream(f"rig-{n}", "fe", rate, model=FAN, model_version=VERSIONS[0]) as s:
                s.send(samples)
                s.close()
                windows = [e for e in s if isinstance(e, Window)]
            assert windows and {w.result.model_name for w in windows} == {FAN}, name
            judged = [w.result.label for w in windows if w.result.label]
            right += sum(lbl == label for lbl in judged)
            total += len(judged)
    # The written model scored 1.000 on these segments' clean windows offline (its report): served, the same.
    print(f"fan-end test segments: {right} of {total} windows right")
    assert total >= 50 and right / total >= 0.9, (right, total)
