"""Open Inference Protocol (KServe V2) conformance: the unmodified tritonclient (gRPC and HTTP) and plain
KServe-style REST calls against the real server binary. Health, metadata, inference with 1, 7 and 256 windows equal
to in-process ONNX Runtime on the golden windows, flagged windows, and every error case with its code."""

import json
import os
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from support import CARD, MODEL, ROOT, WINDOW, running
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def server():
    with running(["--model", str(ROOT / "models" / "drsn_cw_cwru.json")]) as addrs:
        yield addrs


@pytest.fixture(scope="module")
def golden():
    g = np.load(ROOT / "models" / CARD["golden"])
    return g["windows"].astype(np.float32), g["labels"]


def reference(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and calibrated probabilities from in-process ONNX Runtime."""
    session = ort.InferenceSession(str(ROOT / "models" / CARD["onnx"]), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"vibration": windows[:, None, :]})[0]
    t = (CARD.get("calibration") or {}).get("temperature", 1.0)
    z = logits / t
    p = np.exp(z - z.max(1, keepdims=True))
    return logits, p / p.sum(1, keepdims=True)


def clients(server):
    return [
        ("grpc", tgrpc, tgrpc.InferenceServerClient(server["grpc_addr"])),
        ("http", thttp, thttp.InferenceServerClient(server["http_addr"])),
    ]


def infer(mod, client, windows, outputs=None, binary=True):
    x = mod.InferInput("vibration", list(windows.shape), "FP32")
    if mod is thttp:
        x.set_data_from_numpy(windows, binary_data=binary)
        requested = [thttp.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    else:
        x.set_data_from_numpy(windows)
        requested = [tgrpc.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(MODEL, [x], outputs=requested)


def test_health_and_metadata(server):
    for _, _, c in clients(server):
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready(MODEL)
        assert c.is_model_ready(MODEL, CARD["version"])
        assert not c.is_model_ready("no-such-model")
    meta = thttp.InferenceServerClient(server["http_addr"]).get_model_metadata(MODEL)
    assert meta["versions"] == [CARD["version"]]
    assert meta["inputs"] == [{"name": "vibration", "datatype": "FP32", "shape": [-1, 1, WINDOW]}]
    names = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert names["logits"] == ("FP32", [-1, len(CARD["classes"])])
    assert names["label"] == ("BYTES", [-1]) and names["status"] == ("BYTES", [-1])
    gmeta = tgrpc.InferenceServerClient(server["grpc_addr"]).get_model_metadata(MODEL, as_json=True)
    assert gmeta["inputs"][0]["shape"] == ["-1", "1", str(WINDOW)]
    assert "binary_tensor_data" in thttp.InferenceServerClient(server["http_addr"]).get_server_metadata()["extensions"]


@pytest.mark.parametrize("n", [1, 7, 256])
def test_inference_equals_onnx_runtime_on_golden_windows(server, golden, n):
    windows, labels = golden
    idx = np.arange(n) % len(windows)
    x = np.ascontiguousarray(windows[idx])[:, None, :]
    want_logits, want_p = reference(windows[idx])
    for kind, mod, c in clients(server):
        r = infer(mod, c, x)
        np.testing.assert_allclose(r.as_numpy("logits"), want_logits, atol=1e-4, err_msg=kind)
        np.testing.assert_allclose(r.as_numpy("probabilities"), want_p, atol=1e-5, err_msg=kind)
        got = [b.decode() for b in r.as_numpy("label")]
        assert got == [CARD["classes"][k] for k in want_logits.argmax(1)], kind
        status = {b.decode() for b in r.as_numpy("status")}
        assert status <= {"ok", "uncertain"}, kind
        assert r.as_numpy("shrinkage").shape == (n, CARD["shrinkage_units"])
    # The clean golden windows are classified right.
    clean = np.isnan(golden_snr())[idx]
    assert (want_logits.argmax(1)[clean] == labels[idx][clean]).all()


def golden_snr():
    return np.load(ROOT / "models" / CARD["golden"])["snr_db"]


def test_json_outputs_and_a_subset_of_outputs(server, golden):
    windows, _ = golden
    x = np.ascontiguousarray(windows[:3])[:, None, :]
    c = thttp.InferenceServerClient(server["http_addr"])
    r = infer(thttp, c, x, outputs=["label", "noise_score"], binary=False)
    assert [o["name"] for o in r.get_response()["outputs"]] == ["label", "noise_score"]
    assert all("data" in o for o in r.get_response()["outputs"])
    assert r.as_numpy("noise_score").shape == (3,)
    g = tgrpc.InferenceServerClient(server["grpc_addr"])
    r = infer(tgrpc, g, x, outputs=["probabilities"])
    assert r.as_numpy("probabilities").shape == (3, len(CARD["classes"]))
    assert r.as_numpy("logits") is None


def test_windows_the_model_cannot_judge_come_back_flagged(server, golden):
    windows, _ = golden
    x = np.stack([windows[0], np.zeros(WINDOW, np.float32), windows[0] * 1e30])[:, None, :]
    for kind, mod, c in clients(server):
        r = infer(mod, c, x)
        assert [b.decode() for b in r.as_numpy("status")] == [
            r.as_numpy("status")[0].decode(),
            "invalid_signal:flat",
            "invalid_signal:out_of_range",
        ], kind
        labels = [b.decode() for b in r.as_numpy("label")]
        assert labels[0] and labels[1:] == ["", ""], kind
        assert (r.as_numpy("probabilities")[1:] == 0).all()


def expect_error(fn, grpc_code, http_code, text):
    with pytest.raises(InferenceServerException) as e:
        fn()
    assert e.value.status() in (grpc_code, http_code), e.value
    assert text in e.value.message(), e.value.message()


def test_every_error_case_gets_its_code_and_says_which(server, golden):
    windows, _ = golden
    good = np.ascontiguousarray(windows[:2])[:, None, :]
    for kind, mod, c in clients(server):
        bad = "StatusCode.INVALID_ARGUMENT"

        def send(name="vibration", dtype="FP32", data=good, model=MODEL, mod=mod, c=c):
            x = mod.InferInput(name, list(data.shape), dtype)
            x.set_data_from_numpy(data)
            return c.infer(model, [x])

        expect_error(lambda send=send: send(name="signal"), bad, "400", '"signal" is unknown')
        expect_error(lambda send=send: send(dtype="FP64", data=good.astype(np.float64)), bad, "400", "FP64")
        expect_error(lambda send=send: send(data=good[:, 0, :]), bad, "400", f"has shape [2, {WINDOW}]")
        many = np.repeat(good[:1], 257, axis=0)
        expect_error(lambda send=send, many=many: send(data=many), bad, "400", "over the limit of 256")
        expect_error(lambda send=send: send(model="other"), "StatusCode.NOT_FOUND", "404", '"other" is not served')
        nan = good.copy()
        nan[0, 0, 5] = np.nan
        expect_error(lambda send=send, nan=nan: send(data=nan), bad, "400", "must be finite")
        out = mod.InferRequestedOutput("nope")
        x = mod.InferInput("vibration", list(good.shape), "FP32")
        x.set_data_from_numpy(good)
        expect_error(lambda c=c, x=x, out=out: c.infer(MODEL, [x], outputs=[out]), bad, "400", '"nope" is not one of')


def test_the_repository_index_answers_and_loads_are_refused_while_model_control_is_off(server):
    for kind, _, c in clients(server):
        entries = (
            c.get_model_repository_index(as_json=True)["models"] if kind == "grpc" else c.get_model_repository_index()
        )
        assert [(m["name"], m["version"], m["state"]) for m in entries] == [(MODEL, CARD["version"], "READY")]
        off = "model control is off on this server"
        expect_error(lambda c=c: c.load_model(MODEL), "StatusCode.FAILED_PRECONDITION", "403", off)
        expect_error(lambda c=c: c.unload_model(MODEL), "StatusCode.FAILED_PRECONDITION", "403", off)
    assert tgrpc.InferenceServerClient(server["grpc_addr"]).is_model_ready(MODEL)


def rest(server, path, body=None, headers=None):
    req = urllib.request.Request(f"http://{server['http_addr']}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_plain_kserve_rest_calls(server, golden):
    windows, _ = golden
    assert rest(server, "/v2/health/live")[0] == 200
    assert rest(server, "/v2/health/ready")[0] == 200
    assert rest(server, f"/v2/models/{MODEL}/versions/{CARD['version']}/ready")[0] == 200
    assert rest(server, "/v2/models/other")[0] == 404
    # JSON, nested data, as the KServe docs show it.
    body = {
        "id": "42",
        "inputs": [{"name": "vibration", "shape": [1, 1, WINDOW], "datatype": "FP32", "data": [[windows[0].tolist()]]}],
    }
    status, _, raw = rest(
        server, f"/v2/models/{MODEL}/infer", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, raw
    out = json.loads(raw)
    assert out["id"] == "42" and out["model_version"] == CARD["version"]
    logits = next(o for o in out["outputs"] if o["name"] == "logits")
    np.testing.assert_allclose(logits["data"], reference(windows[:1])[0].ravel(), atol=1e-4)
    # The binary extension, by hand: JSON header, then the raw tensor.
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "vibration",
                    "shape": [1, 1, WINDOW],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": WINDOW * 4},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, headers, raw = rest(
        server,
        f"/v2/models/{MODEL}/infer",
        head + windows[0].tobytes(),
        {"Inference-Header-Content-Length": str(len(head))},
    )
    assert status == 200
    n = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
    meta = json.loads(raw[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    assert n + sum(sizes) == len(raw)
    # Malformed: not JSON, and a byte count that does not match the shape.
    assert rest(server, f"/v2/models/{MODEL}/infer", b"{", {})[0] == 400
    status, _, raw = rest(
        server, f"/v2/models/{MODEL}/infer", head + b"\0" * 12, {"Inference-Header-Content-Length": str(len(head))}
    )
    assert status == 400 and b"binary_data_size" in raw


def test_v2_windows_are_counted_apart(server):
    with urllib.request.urlopen(f"http://{server['metrics_addr']}/metrics", timeout=10) as r:
        text = r.read().decode()
    counted = [line for line in text.splitlines() if line.startswith('drsn_windows_diagnosed_total{api="v2"}')]
    assert counted and float(counted[0].split()[-1]) > 0, counted
    assert os.environ.get("DRSN_SKIP") is None
