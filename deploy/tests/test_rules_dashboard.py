"""deploy/prometheus and deploy/grafana without a server: promtool checks and unit tests, the PrometheusRule in step
with rules.yml, every metric name a real one, and the dashboard's shape (provisioning-ready, variables, filters)."""

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


def test_promtool_check_rules():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests():
    out = promtool("test", "rules", str(DEPLOY / "prometheus" / "rules_test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_config():
    out = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


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


def test_dashboard_uses_real_metrics():
    used = set()
    for _, t in dashboard_targets():
        used |= metric_names_in(t["expr"])
    for v in dashboard()["templating"]["list"]:
        used |= metric_names_in(json.dumps(v.get("query", "")))
    unknown = sorted(n for n in used if not is_exported(n))
    assert not unknown, f"not in src/telemetry/metrics.rs: {unknown}"
    # A metric added to the service without a panel is reported, not failed: the dashboard follows the service.
    missing = sorted(
        m
        for m, kind in exported_metrics().items()
        if not ({m} if kind != "histogram" else {m + "_bucket", m + "_sum", m + "_count"}) & used
    )
    if missing:
        warnings.warn(f"metrics with no panel on deploy/grafana/dashboard.json: {missing}", stacklevel=1)


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
    # Every series selector is filtered by the namespace and pod variables.
    for m in METRIC_RE.finditer(expr):
        rest = expr[m.end() :]
        assert rest.startswith('{namespace=~"$namespace", pod=~"$pod"}'), f"{title}: {m.group(1)} is not filtered"


def test_grafana_provisioning_files():
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    dash = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "drsn-serve.yml").read_text())
    assert dash["providers"][0]["type"] == "file"
