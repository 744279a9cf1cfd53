"""Live: the real server, started with the CPU overlay's settings (every listener on an ephemeral loopback port),
scraped by a real Prometheus (Debian's binary) loading rules.yml, under real traffic (real-time replays, a flat
signal, unary calls good and bad, KServe V2 REST infer calls), the shipped model served from a repository with a
candidate version shadowing it. The Deployment's probes must answer, and every
dashboard query, template variable, recording rule and prometheus-adapter query must return data."""

from __future__ import annotations

import contextlib
import json
import random
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from support import (
    BIN,
    DEPLOY,
    FIXTURES,
    REPO,
    Prometheus,
    Server,
    binary,
    grpc_diagnose_raw,
    grpc_health,
    http_post_json,
    http_status,
    metric_names_in,
    model_card,
    one,
    pod_configmap_env,
    render,
    scrape,
)
from test_rules_dashboard import dashboard, dashboard_targets, rule_groups

# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape); 30s is what a short range gives at the
# 1s scrape used here.
RATE_INTERVAL = "30s"
WARM_UP_S = 60  # longest any query may take to show data, from the start of traffic
DRAIN_TIMEOUT = "3s"


def prometheus_config(metrics_addr: str) -> tuple[dict, dict]:
    """deploy/prometheus/prometheus.yml pointed at this server, scraping every second; and its static labels."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    static["targets"] = [metrics_addr]
    return config, {"job": job["job_name"], **static["labels"]}


CANDIDATE = "99.0.0"


def shadowed_repository(card: Path, root: Path) -> Path:
    """A model repository holding the shipped card at its version and the same network as version CANDIDATE."""
    shipped = json.loads(card.read_text())
    for version in (shipped["version"], CANDIDATE):
        folder = root / shipped["name"] / version
        folder.mkdir(parents=True)
        paths = {k: str(card.parent / shipped[k]) for k in ("onnx", "golden") if shipped.get(k)}
        (folder / "card.json").write_text(json.dumps({**shipped, **paths, "version": version}))
    return root


class Traffic:
    """Real-time replays of the CWRU excerpts and a flat signal, in a loop, until stopped."""

    def __init__(self, addr: str, flat_csv):
        self.addr, self.stop_event = addr, threading.Event()
        self.files = [*sorted(map(str, FIXTURES.glob("*.mat"))), str(flat_csv)]
        assert len(self.files) > 5, f"no fixtures in {FIXTURES}"
        self.runs, self.failures = 0, []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop_event.is_set():
            out = subprocess.run(
                [
                    str(BIN),
                    "replay",
                    "--addr",
                    f"http://{self.addr}",
                    "--realtime",
                    "--quiet",
                    "--streams",
                    "2",
                    *self.files,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.runs += 1
            if out.returncode != 0:
                self.failures.append(out.stderr[-2000:])

    def stop(self):
        self.stop_event.set()
        self.thread.join(90)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    binary()
    tmp = tmp_path_factory.mktemp("live")
    env = pod_configmap_env(render("cpu"))
    # The pod's model path is the image's; the same card is in models/ here. It serves from a repository beside a
    # candidate version shadowing it, so that the shadow-scoring panels have data too.
    card = REPO / "models" / env.pop("DRSN_MODEL").removeprefix("/app/models/")
    env["DRSN_MODEL_REPOSITORY"] = str(shadowed_repository(card, tmp / "repository"))
    env["DRSN_MODEL_CONTROL"] = "explicit"
    env["DRSN_DRAIN_TIMEOUT"] = DRAIN_TIMEOUT
    server = Server(env=env)
    prom = traffic = None
    try:
        shipped = json.loads(card.read_text())
        loaded = http_post_json(
            f"http://{server.http_addr}/v2/repository/models/{shipped['name']}/load",
            {"parameters": {"serve": shipped["version"], "shadow": CANDIDATE}},
        )
        assert f"version {CANDIDATE} shadows it" in loaded["result"], loaded
        config, labels = prometheus_config(server.metrics_addr)
        prom = Prometheus(config, tmp)
        flat = tmp / "flat.csv"
        # A dead sensor, two windows long: answered as flagged, reason="flat".
        flat.write_text("0.25\n" * (2 * model_card()["input"]["window"]))
        traffic = Traffic(server.grpc_addr, flat)
        yield {"server": server, "prom": prom, "labels": labels, "traffic": traffic, "started": time.monotonic()}
    finally:
        if traffic:
            traffic.stop()
        if prom:
            prom.stop()
        server.stop()


def substitute(expr: str, labels: dict) -> str:
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", labels["namespace"])
        .replace("$pod", labels["pod"])
        .replace("${datasource}", "prometheus")
    )


def wait_for_data(stack, query, within: float | None = None) -> list:
    """Polls until the query returns a sample: for up to WARM_UP_S from the start of traffic, or for `within`
    seconds from now (data a test has only just made)."""
    deadline = time.monotonic() + within if within else stack["started"] + WARM_UP_S
    while True:
        result = query()
        if result:
            return result
        assert time.monotonic() < deadline, "no data"
        time.sleep(0.5)


def test_health_is_serving(stack):
    """What the kubelet's gRPC probes ask: grpc.health.v1.Health/Check, no token."""
    assert grpc_health(stack["server"].grpc_addr) == "SERVING"


def test_probes_answer_on_the_real_server(stack):
    """The Deployment's probes asked of the real server as the kubelet asks them: each httpGet path, on the listener
    its port names, answers 200 while SERVING; so do /healthz and the REST API's own readiness."""
    (c,) = one(render("cpu"), "Deployment", "drsn-serve")["spec"]["template"]["spec"]["containers"]
    names = {p["containerPort"]: p["name"] for p in c["ports"]}
    server = stack["server"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        port = names.get(get["port"], get["port"])
        url = f"{get.get('scheme', 'HTTP').lower()}://{server.addrs[port]}{get['path']}"
        assert http_status(url) == 200, f"{probe}: {url}"
    assert http_status(f"http://{server.metrics_addr}/healthz") == 200
    assert http_status(f"http://{server.http_addr}/v2/health/ready") == 200


def window_samples(seed: int = 7) -> list[float]:
    """One window (the card's length) of Gaussian noise at 0.1 g RMS: in range, not flat, not clipped."""
    rng = random.Random(seed)
    return [rng.gauss(0.0, 0.1) for _ in range(model_card()["input"]["window"])]


def unary_call(addr: str) -> None:
    import grpc

    code, reply = grpc_diagnose_raw(addr, window_samples())
    assert code == grpc.StatusCode.OK and reply


def v2_rest_infer(http_addr: str) -> dict:
    """POST /v2/models/<name>/infer: one FP32 tensor [1, 1, window] in JSON, as the card describes the input."""
    card = model_card()
    window = card["input"]["window"]
    tensor = {"name": card["input"]["name"], "shape": [1, 1, window], "datatype": "FP32", "data": window_samples()}
    return http_post_json(f"http://{http_addr}/v2/models/{card['name']}/infer", {"inputs": [tensor]})


def test_unary_calls_good_and_bad(stack):
    import grpc

    addr = stack["server"].grpc_addr
    unary_call(addr)
    code, _ = grpc_diagnose_raw(addr, None, nbytes=8)  # a window of 2 samples
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_v2_rest_infer_is_counted(stack):
    """One KServe V2 REST infer call is answered for the card's model and counted in drsn_requests_total{api="v2"}:
    one more on the server's /metrics, and seen by Prometheus."""
    server, prom, labels = stack["server"], stack["prom"], stack["labels"]
    assert not server.http_addr.endswith(":8000"), "the REST listener should be ephemeral, not the default port"
    series = 'drsn_requests_total{api="v2"}'
    before = scrape(server.metrics_addr)[series]
    reply = v2_rest_infer(server.http_addr)
    assert reply["model_name"] == model_card()["name"]
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["status"]["shape"] == [1] and outputs["status"]["data"][0] in ("ok", "uncertain"), outputs
    assert outputs["label"]["data"][0] in model_card()["classes"]
    assert scrape(server.metrics_addr)[series] == before + 1
    query = f'drsn_requests_total{{namespace="{labels["namespace"]}",api="v2"}} >= {before + 1}'
    wait_for_data(stack, lambda: prom.query(query), within=30)


def test_target_is_scraped_with_podmonitor_labels(stack):
    result = wait_for_data(stack, lambda: stack["prom"].query('up{job="drsn-serve"} == 1'))
    (series,) = result
    for k, v in stack["labels"].items():
        assert series["metric"][k] == v


def test_traffic_flows(stack):
    labels = stack["labels"]
    sel = f'namespace="{labels["namespace"]}"'
    wait_for_data(stack, lambda: stack["prom"].query(f'drsn_windows_diagnosed_total{{{sel},api="stream"}} > 0'))
    wait_for_data(stack, lambda: stack["prom"].query(f'drsn_windows_flagged_total{{{sel},reason="flat"}} > 0'))
    wait_for_data(stack, lambda: stack["prom"].query(f'drsn_errors_total{{{sel},code="INVALID_ARGUMENT"}} > 0'))
    assert not stack["traffic"].failures, stack["traffic"].failures[0]


@pytest.mark.parametrize(
    "title,target", dashboard_targets(), ids=[f"{t}[{x['refId']}]" for t, x in dashboard_targets()]
)
def test_dashboard_query_returns_data(stack, title, target):
    expr = substitute(target["expr"], stack["labels"])
    wait_for_data(stack, lambda: stack["prom"].query(expr))


# Series the stream and request panels must show above zero under the live traffic; a panel summed over everything
# has no labels left, and any series above zero will do.
TRAFFIC_PANELS = {
    "drsn_streams_opened_total": [{}],
    "drsn_streams_ended_total": [{"how": "ok"}],
    "drsn_requests_total": [{"api": "unary"}, {"api": "v2"}],
}


def test_stream_and_request_panels_show_the_traffic(stack):
    """More than data: the panels show the replays' streams opening and ending OK, and a unary and a V2 call made
    just before (their rate windows are 30s)."""
    prom, server = stack["prom"], stack["server"]
    unary_call(server.grpc_addr)
    v2_rest_infer(server.http_addr)
    targets = [
        (target, metric)
        for _, target in dashboard_targets()
        for metric in TRAFFIC_PANELS
        if metric in metric_names_in(target["expr"])
    ]
    assert len(targets) >= 4, "the stream and request panels are missing from the dashboard"
    for target, metric in targets:
        expr = substitute(target["expr"], stack["labels"])
        wants = TRAFFIC_PANELS[metric] if " by (" in expr else [{}]

        def shown(expr=expr, wants=wants):
            result = prom.query(expr)
            above = [s["metric"] for s in result if float(s["value"][1]) > 0]
            return result if all(any(m.items() >= w.items() for m in above) for w in wants) else []

        wait_for_data(stack, shown, within=30)


@pytest.mark.parametrize("variable", [v for v in dashboard()["templating"]["list"] if v["type"] == "query"])
def test_dashboard_variable_has_values(stack, variable):
    """label_values(SELECTOR, LABEL), as Grafana asks it: the label's values on the matching series."""
    m = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
    assert m, variable["query"]
    selector, label = substitute(m.group(1), stack["labels"]), m.group(2)
    values = wait_for_data(stack, lambda: stack["prom"].api(f"label/{label}/values", {"match[]": selector}))
    assert stack["labels"][label] in values


# The machines group needs --machine-metrics and a machine in each state: test_fleet_live.py checks its rules.
@pytest.mark.parametrize(
    "record",
    [r["record"] for g in rule_groups() if g["name"] != "drsn-serve.machines" for r in g["rules"] if "record" in r],
)
def test_recording_rule_returns_data(stack, record):
    wait_for_data(stack, lambda: stack["prom"].query(record))


def test_rules_evaluate_without_errors(stack):
    wait_for_data(stack, lambda: stack["prom"].query("namespace_pod:drsn_windows:rate5m"))
    groups = stack["prom"].api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in rule_groups())
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def adapter_rules() -> list[dict]:
    cm = one(render("monitoring"), "ConfigMap", "drsn-prometheus-adapter")
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


@pytest.mark.parametrize("rule", adapter_rules(), ids=lambda r: r["name"]["as"])
def test_prometheus_adapter_query_returns_data(stack, rule):
    """The adapter's series discovery and its per-pod query, filled in as it does for one pod."""
    prom, labels = stack["prom"], stack["labels"]
    series = wait_for_data(stack, lambda: prom.api("series", {"match[]": rule["seriesQuery"]}))
    metric = series[0]["__name__"]
    assert re.fullmatch(rule["name"]["matches"], metric)
    assert set(rule["resources"]["overrides"]) <= set(series[0]), "series lack the namespace/pod labels"
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", metric)
        .replace("<<.LabelMatchers>>", f'namespace="{labels["namespace"]}",pod=~"{labels["pod"]}"')
        .replace("<<.GroupBy>>", "pod")
    )
    result = wait_for_data(stack, lambda: prom.query(query))
    assert result[0]["metric"] == {"pod": labels["pod"]}


def test_sigterm_drains_and_exits(stack):
    """Last: what the kubelet does after preStop. The process must exit 0 within the drain timeout (the grace
    period adds the preStop sleep and a margin on top)."""
    stack["traffic"].stop()
    server = stack["server"]
    # A stream in flight when the signal comes.
    replay = subprocess.Popen(
        [
            str(BIN),
            "replay",
            "--addr",
            f"http://{server.grpc_addr}",
            "--realtime",
            "--quiet",
            *map(str, FIXTURES.glob("*.mat")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.1)
        start = time.monotonic()
        assert server.terminate(timeout=float(DRAIN_TIMEOUT.removesuffix("s")) + 5) == 0
        assert time.monotonic() - start < float(DRAIN_TIMEOUT.removesuffix("s")) + 2
        assert any("draining" in line for line in server.lines)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            replay.wait(10)
        if replay.poll() is None:
            replay.kill()
            replay.wait()
