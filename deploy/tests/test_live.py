"""Live: the real server, started with the CPU overlay's settings, scraped by a real Prometheus (Debian's binary)
loading rules.yml, under real traffic (real-time replays, a flat signal, unary calls good and bad). Every
dashboard query, template variable, recording rule and prometheus-adapter query must return data."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time

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
    one,
    pod_configmap_env,
    render,
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
    # The pod's model path is the image's; the same card is in models/ here.
    env["DRSN_MODEL"] = str(REPO / "models" / env["DRSN_MODEL"].removeprefix("/app/models/"))
    env["DRSN_DRAIN_TIMEOUT"] = DRAIN_TIMEOUT
    server = Server(env=env)
    prom = traffic = None
    try:
        config, labels = prometheus_config(server.metrics_addr)
        prom = Prometheus(config, tmp)
        flat = tmp / "flat.csv"
        flat.write_text("0.25\n" * 4096)  # a dead sensor: answered as flagged, reason="flat"
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


def wait_for_data(stack, query) -> list:
    """Polls until the query returns a sample, for up to WARM_UP_S from the start of traffic."""
    deadline = stack["started"] + WARM_UP_S
    while True:
        result = query()
        if result:
            return result
        assert time.monotonic() < deadline, "no data"
        time.sleep(0.5)


def test_health_is_serving(stack):
    """What the kubelet's gRPC probes ask: grpc.health.v1.Health/Check, no token."""
    assert grpc_health(stack["server"].grpc_addr) == "SERVING"


def test_unary_calls_good_and_bad(stack):
    import grpc

    addr = stack["server"].grpc_addr
    code, reply = grpc_diagnose_raw(addr, [0.01 * ((i * 37) % 101 - 50) for i in range(2048)])
    assert code == grpc.StatusCode.OK and reply
    code, _ = grpc_diagnose_raw(addr, None, nbytes=8)  # a window of 2 samples, not 2048
    assert code == grpc.StatusCode.INVALID_ARGUMENT


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


@pytest.mark.parametrize("variable", [v for v in dashboard()["templating"]["list"] if v["type"] == "query"])
def test_dashboard_variable_has_values(stack, variable):
    """label_values(SELECTOR, LABEL), as Grafana asks it: the label's values on the matching series."""
    m = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
    assert m, variable["query"]
    selector, label = substitute(m.group(1), stack["labels"]), m.group(2)
    values = wait_for_data(stack, lambda: stack["prom"].api(f"label/{label}/values", {"match[]": selector}))
    assert stack["labels"][label] in values


@pytest.mark.parametrize("record", [r["record"] for g in rule_groups() for r in g["rules"] if "record" in r])
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
