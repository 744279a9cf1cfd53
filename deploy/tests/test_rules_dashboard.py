"""deploy/prometheus and deploy/grafana without a server: promtool checks and unit tests, the PrometheusRule in step
with rules.yml, every metric name a real one, every dashboard query valid PromQL, and both dashboards' shape
(provisioning-ready, variables, filters)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings

import pytest
import yaml
from support import DEPLOY, KUBE, METRIC_RE, exported_metrics, is_exported, metric_names_in

RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
FLEET = DEPLOY / "grafana" / "fleet.json"
MACHINE_GROUP = "drsn-serve.machines"


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool (Debian package `prometheus`) is needed; .ci/run installs it"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, dict]]:
    out = []
    for p in dashboard()["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t))
    return out


def fleet() -> dict:
    return json.loads(FLEET.read_text())


def fleet_panels() -> list[tuple[dict, bool]]:
    """The fleet dashboard's panels, each with whether it is in the machine drill-down (below the row named for
    the machine_id variable)."""
    out, drill_down = [], False
    for p in fleet()["panels"]:
        if p["type"] == "row":
            drill_down = "$machine_id" in p["title"]
        out.append((p, drill_down))
    return out


def fleet_targets() -> list[tuple[str, dict]]:
    return [(p["title"], t) for p, _ in fleet_panels() for t in p.get("targets", [])]


def variable_selector(query: str) -> str:
    """The series selector of a Grafana label_values(SELECTOR, LABEL) variable query."""
    m = re.fullmatch(r"label_values\((.+), *(\w+)\)", query)
    assert m, query
    return m.group(1)


def test_promtool_check_rules():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests():
    out = promtool("test", "rules", str(DEPLOY / "prometheus" / "rules_test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_config():
    out = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_machine_alerts_are_by_machine():
    """The machine group's alerts aggregate the pod away by machine (a stream moving between replicas must not
    resolve or re-fire them), keep firing through a missed scrape, carry machine_id and sensor_id, and set a
    severity Alertmanager routes; the service's alerts are about pods and namespaces, never machines."""
    groups = {g["name"]: g for g in rule_groups()}
    machine_alerts = [r for r in groups[MACHINE_GROUP]["rules"] if "alert" in r]
    assert {r["alert"] for r in machine_alerts} >= {"MachineFault", "MachineSensorFault"}
    for r in machine_alerts:
        by = re.search(r"^\s*(?:min|max) by \(([^)]*)\)", r["expr"])
        assert by, f"{r['alert']}: not aggregated by machine"
        labels = {x.strip() for x in by.group(1).split(",")}
        assert {"machine_id", "sensor_id"} <= labels and "pod" not in labels, r["alert"]
        assert r.get("keep_firing_for"), f"{r['alert']}: a missed scrape would resolve it"
        assert set(re.findall(r"\b(critical|warning|info)\b", r["labels"]["severity"])) <= {
            "critical",
            "warning",
            "info",
        }
    fault = next(r for r in machine_alerts if r["alert"] == "MachineFault")
    assert {"class", "zone"} <= {x.strip() for x in re.search(r"by \(([^)]*)\)", fault["expr"]).group(1).split(",")}
    assert "humanizeTimestamp" in fault["annotations"]["description"]
    for g in rule_groups():
        if g["name"] != MACHINE_GROUP:
            for r in g["rules"]:
                assert "machine_id" not in r["expr"], (
                    f"{r.get('alert') or r['record']}: machines belong in {MACHINE_GROUP}"
                )


def test_every_alert_is_unit_tested_firing_and_quiet():
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (firing if a["exp_alerts"] else quiet).add(a["alertname"])
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested staying quiet"


def test_prometheusrule_holds_exactly_the_rules():
    crd = yaml.safe_load((KUBE / "monitoring" / "prometheusrule.yaml").read_text())
    assert crd["spec"]["groups"] == rule_groups(), "stale: run `make deploy-gen`"


def test_rules_use_real_metrics():
    used = set()
    for g in rule_groups():
        for r in g["rules"]:
            used |= metric_names_in(r["expr"])
    unknown = sorted(n for n in used if not is_exported(n))
    assert not unknown, f"not in src/telemetry/metrics.rs: {unknown}"
    assert len(used) >= 10


def dashboard_metrics(d: dict) -> set[str]:
    used = set()
    for p in d["panels"]:
        for t in p.get("targets", []):
            used |= metric_names_in(t["expr"])
    for v in d["templating"]["list"]:
        used |= metric_names_in(json.dumps(v.get("query", "")))
    return used


@pytest.mark.parametrize("d", [dashboard(), fleet()], ids=["dashboard.json", "fleet.json"])
def test_dashboard_uses_real_metrics(d):
    used = dashboard_metrics(d)
    unknown = sorted(n for n in used if not is_exported(n))
    assert not unknown, f"not in src/telemetry/metrics.rs: {unknown}"


def test_every_metric_has_a_panel():
    """A metric added to the service without a panel on either dashboard is reported, not failed: the dashboards
    follow the service."""
    used = dashboard_metrics(dashboard()) | dashboard_metrics(fleet())
    missing = sorted(
        m
        for m, kind in exported_metrics().items()
        if not ({m} if kind != "histogram" else {m + "_bucket", m + "_sum", m + "_count"}) & used
    )
    if missing:
        warnings.warn(f"metrics with no panel on deploy/grafana (dashboard.json, fleet.json): {missing}", stacklevel=1)


# Values for the dashboards' variables, to check their queries as Prometheus would get them.
SAMPLE_VARIABLES = {
    "$__rate_interval": "1m",
    "$namespace": "drsn",
    "$pod": ".*",
    "$machine_id": "press-1",
    "${datasource}": "prometheus",
}


def substitute_sample(expr: str) -> str:
    for k, v in SAMPLE_VARIABLES.items():
        expr = expr.replace(k, v)
    return expr


def test_dashboard_queries_parse(tmp_path):
    """Every query of both dashboards, and the selector of every query variable, with the variables filled in, is
    valid PromQL: promtool parses each as a recording rule's expression."""
    exprs = [t["expr"] for _, t in dashboard_targets() + fleet_targets()]
    for d in (dashboard(), fleet()):
        exprs += [variable_selector(v["query"]["query"]) for v in d["templating"]["list"] if v["type"] == "query"]
    rules = [{"record": f"dashboard:query_{i}:check", "expr": substitute_sample(e)} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(rules)} rules found" in out.stdout


def test_dashboard_is_provisioning_ready():
    d = dashboard()
    assert d["uid"] == "drsn-serve" and d["title"]
    assert "__inputs" not in d and "__requires" not in d, "an export for sharing, not a provisioning model"
    assert d.get("id") is None
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "pod"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert variables["pod"]["includeAll"] and variables["pod"]["allValue"] == ".*"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


@pytest.mark.parametrize("title,target", dashboard_targets(), ids=lambda x: x if isinstance(x, str) else "")
def test_dashboard_query_shape(title, target):
    expr = target["expr"]
    assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
    assert "instance" not in expr, f"{title}: no hard-coded instance"
    for window in re.findall(r"\[([^\]]+)\]", expr):
        assert window == "$__rate_interval", f"{title}: range {window!r} should be $__rate_interval"
    # Every series selector is filtered by the namespace and pod variables first (other matchers may follow).
    for m in METRIC_RE.finditer(expr):
        rest = expr[m.end() :]
        assert re.match(r'\{namespace=~"\$namespace", pod=~"\$pod"[,}]', rest), f"{title}: {m.group(1)} is not filtered"


def test_fleet_dashboard_is_provisioning_ready():
    d = fleet()
    assert d["uid"] == "drsn-serve-fleet" and d["title"]
    assert "__inputs" not in d and "__requires" not in d, "an export for sharing, not a provisioning model"
    assert d.get("id") is None
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "machine_id"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "machine_id"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # One machine at a time: the drill-down filters machine_id="$machine_id" (exact, no regex to escape).
    assert not variables["machine_id"]["multi"] and not variables["machine_id"]["includeAll"]
    assert variable_selector(variables["machine_id"]["query"]["query"]) == 'drsn_machine_info{namespace=~"$namespace"}'
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert any(drill for _, drill in fleet_panels()), "no drill-down row named for $machine_id"
    titles = {p["title"]: p for p, _ in fleet_panels()}
    assert titles["Condition per machine"]["type"] == "state-timeline"
    # The table of machines not NORMAL shows class, share, zone, since and sensor.
    table = titles["Machines not NORMAL"]
    (organize,) = [x["options"] for x in table["transformations"] if x["id"] == "organize"]
    columns = set(organize["indexByName"]) - set(organize["excludeByName"])
    shown = {organize["renameByName"].get(c, c) for c in columns}
    assert {"machine", "condition", "class", "share", "zone", "since", "sensor"} <= shown, shown


@pytest.mark.parametrize(
    "panel,drill_down",
    [(p, d) for p, d in fleet_panels() if p.get("targets")],
    ids=lambda x: x["title"] if isinstance(x, dict) else "",
)
def test_fleet_query_shape(panel, drill_down):
    """Machines move between replicas, so the fleet dashboard filters by namespace, never by pod. The drill-down
    shows one machine: its per-machine series are filtered by it, and the service-wide series it shows are limited
    to the replicas holding the machine and say they are replica-wide."""
    title = panel["title"]
    machine = 'drsn_machine_info{namespace=~"$namespace", machine_id="$machine_id"}'
    for target in panel["targets"]:
        expr = target["expr"]
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert "instance" not in expr and "pod=~" not in expr, f"{title}: no instance, no pod filter"
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{title}: range {window!r} should be $__rate_interval"
        for m in METRIC_RE.finditer(expr):
            rest = expr[m.end() :]
            assert rest.startswith('{namespace=~"$namespace"'), f"{title}: {m.group(1)} is not filtered by namespace"
            if drill_down and m.group(1).startswith("drsn_machine_"):
                assert rest.startswith('{namespace=~"$namespace", machine_id="$machine_id"}'), (
                    f"{title}: {m.group(1)} is not filtered by the machine"
                )
            if not drill_down:
                assert "$machine_id" not in rest.split("}")[0], f"{title}: a fleet panel filtered by the machine"
        service_wide = {n for n in metric_names_in(expr) if not n.startswith("drsn_machine_")}
        if drill_down and service_wide:
            assert f"and on (namespace, pod) {machine}" in expr, f"{title}: not limited to the machine's replicas"
            assert "replica-wide" in title.lower() and "replica-wide" in panel["description"].lower(), title


def test_grafana_provisioning_files():
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    dash = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "drsn-serve.yml").read_text())
    assert dash["providers"][0]["type"] == "file"
