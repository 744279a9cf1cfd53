"""Live, the fleet dashboard: the real server with --machine-metrics (and the CPU overlay's settings), scraped every
second by a real Prometheus loading rules.yml, while real-time replays stream three machines: one with an inner
race fault, one healthy, one whose sensor is stuck (a flat signal). Every fleet dashboard query (variables filled
in, the machine being the faulty one), both query variables and every recording rule of the machines group must
return data, and the machines must show the conditions their recordings have.

Needs a binary with the per-machine condition (`serve --machine-metrics`, `replay --machine-id`): an older one
fails these tests with a message saying so, never skips them."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import (
    FIXTURES,
    MachineReplay,
    Prometheus,
    Server,
    local_pod_env,
    long_recording,
    require_machine_metrics,
)
from test_live import RATE_INTERVAL, prometheus_config
from test_rules_dashboard import MACHINE_GROUP, fleet, fleet_targets, rule_groups, variable_selector

WARM_UP_S = 90  # longest any query may take to show data, from the start of the replays
RECORDING_S = 300  # each replay's length: longer than the module runs, so a machine's stream never restarts
MACHINES = {
    "fleet-inner-race": "12k_Drive_End_IR007_0_105.mat",
    "fleet-healthy": "normal_0_97.mat",
    "fleet-stuck-sensor": None,  # a flat signal
}
FAULTY = "fleet-inner-race"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_machine_metrics()
    tmp = tmp_path_factory.mktemp("fleet")
    server = Server(env=local_pod_env(), args=["--machine-metrics"])
    prom = None
    replays = []
    try:
        config, labels = prometheus_config(server.metrics_addr)
        prom = Prometheus(config, tmp)
        for machine, fixture in MACHINES.items():
            path = tmp / machine / ("de.wav" if fixture else "de.npy")
            if fixture:
                long_recording(FIXTURES / fixture, path, RECORDING_S)
            else:
                path.parent.mkdir()
                np.save(path, np.full(RECORDING_S * 12_000, 0.25, dtype=np.float32))
            replays.append(MachineReplay(server.grpc_addr, path, machine))
        yield {"server": server, "prom": prom, "labels": labels, "replays": replays, "started": time.monotonic()}
    finally:
        for r in replays:
            r.stop()
        if prom:
            prom.stop()
        server.stop()


def substitute(expr: str, labels: dict) -> str:
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", labels["namespace"])
        .replace("$machine_id", FAULTY)
        .replace("${datasource}", "prometheus")
    )


def wait_for_data(stack, query, what: str) -> list:
    """Polls until the query returns something, for up to WARM_UP_S from the start of the replays; on failure says
    what the server exported per machine and how the replays went."""
    while True:
        result = query()
        if result:
            return result
        if time.monotonic() > stack["started"] + WARM_UP_S:
            info = stack["prom"].query("drsn_machine_info")
            failures = [f for r in stack["replays"] for f in r.failures]
            raise AssertionError(
                f"no data for {what} after {WARM_UP_S}s. drsn_machine_info: "
                f"{[s['metric'] for s in info]}; replay failures: {failures[:2]}; server log:\n"
                + "\n".join(stack["server"].lines[-15:])
            )
        time.sleep(0.5)


def test_machines_show_their_conditions(stack):
    """The inner race recording makes a FAULT with an inner race class, the healthy one NORMAL."""
    prom = stack["prom"]
    fault = wait_for_data(
        stack,
        lambda: prom.query(f'drsn_machine_info{{machine_id="{FAULTY}", condition="fault"}}'),
        f"{FAULTY} in FAULT",
    )
    assert fault[0]["metric"]["class"].startswith("inner_race_"), fault[0]["metric"]
    assert fault[0]["metric"]["sensor_id"], fault[0]["metric"]
    wait_for_data(
        stack,
        lambda: prom.query('drsn_machine_info{machine_id="fleet-healthy", condition="normal"}'),
        "fleet-healthy NORMAL",
    )
    assert not [f for r in stack["replays"] for f in r.failures]


@pytest.mark.parametrize("title,target", fleet_targets(), ids=[f"{t}[{x['refId']}]" for t, x in fleet_targets()])
def test_fleet_query_returns_data(stack, title, target):
    expr = substitute(target["expr"], stack["labels"])
    wait_for_data(stack, lambda: stack["prom"].query(expr), f"{title} [{target['refId']}]: {expr}")


def test_not_normal_table_shows_the_faulty_machine(stack):
    """More than data: the faulty machine is a row of the table of machines not NORMAL, with its class, and the
    healthy one is not."""
    (panel,) = [p for p in fleet()["panels"] if p["title"] == "Machines not NORMAL"]
    expr = substitute(panel["targets"][0]["expr"], stack["labels"])

    def rows():
        result = stack["prom"].query(expr)
        return result if any(s["metric"]["machine_id"] == FAULTY for s in result) else []

    result = wait_for_data(stack, rows, f"{FAULTY} in the table of machines not NORMAL")
    machines = {s["metric"]["machine_id"]: s["metric"] for s in result}
    assert machines[FAULTY]["class"].startswith("inner_race_"), machines
    assert "fleet-healthy" not in machines


@pytest.mark.parametrize(
    "variable", [v for v in fleet()["templating"]["list"] if v["type"] == "query"], ids=lambda v: v["name"]
)
def test_fleet_variable_has_values(stack, variable):
    """label_values(SELECTOR, LABEL), as Grafana asks it."""
    label = variable["query"]["query"].rsplit(",", 1)[1].strip(" )")
    selector = substitute(variable_selector(variable["query"]["query"]), stack["labels"])
    want = {"namespace": {stack["labels"]["namespace"]}, "machine_id": set(MACHINES)}[label]

    def values():
        got = stack["prom"].api(f"label/{label}/values", {"match[]": selector})
        return got if want <= set(got) else []

    wait_for_data(stack, values, f"variable {label}: {sorted(want)}")


@pytest.mark.parametrize(
    "record", [r["record"] for g in rule_groups() if g["name"] == MACHINE_GROUP for r in g["rules"] if "record" in r]
)
def test_machine_recording_rule_returns_data(stack, record):
    wait_for_data(stack, lambda: stack["prom"].query(record), record)


def test_machine_rules_evaluate_without_errors(stack):
    prom = stack["prom"]
    wait_for_data(stack, lambda: prom.query("namespace_condition:drsn_machine_condition:count"), "the machine rules")
    (group,) = [g for g in prom.api("rules")["groups"] if g["name"] == MACHINE_GROUP]
    bad = [(r["name"], r.get("lastError")) for r in group["rules"] if r["health"] != "ok"]
    assert not bad, bad
