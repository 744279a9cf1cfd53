"""deploy/alertmanager/alertmanager.yml: `amtool check-config`, every severity the rules can set routed to the
receiver its comment names, and, against a real Alertmanager with that configuration, the inhibition of a
machine's MachineFault by its MachineSensorFault and the amtool commands deploy/README.md shows for acknowledging
and shelving (silence add / query / expire, alert query)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest
import yaml
from support import DEPLOY, Alertmanager, alertmanager_exe
from test_rules_dashboard import rule_groups

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
# Where each severity goes: a pager for critical, the team for warning, tickets for info.
RECEIVER = {"critical": "pager", "warning": "team", "info": "ticket"}


def amtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("amtool")
    if not exe:
        pytest.skip("amtool (Debian package `prometheus-alertmanager`, which .ci/run installs) is not on PATH")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def rule_severities() -> dict[str, set[str]]:
    """Alert name -> the severities its rule can set (a templated severity, such as MachineFault's from the ISO
    10816 zone, names each it can produce)."""
    out: dict[str, set[str]] = {}
    for g in rule_groups():
        for r in g["rules"]:
            if "alert" in r:
                # The text outside {{ ... }} actions: the severity itself, or each branch's.
                values = re.sub(r"\{\{.*?\}\}", " ", r["labels"]["severity"]).split()
                out.setdefault(r["alert"], set()).update(values)
    return out


def test_amtool_check_config():
    out = amtool("check-config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_rule_severity_is_routed():
    severities = rule_severities()
    assert severities["MachineFault"] == {"critical", "warning", "info"}
    for alert, values in severities.items():
        assert values <= set(RECEIVER), f"{alert}: severity {values - set(RECEIVER)} has no route"
        for severity in values:
            labels = [f"alertname={alert}", f"severity={severity}", "machine_id=press-1", "namespace=drsn"]
            out = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
            assert out.returncode == 0, out.stdout + out.stderr
            assert out.stdout.split() == [RECEIVER[severity]], f"{alert} {severity}: {out.stdout}"


def test_grouping_and_inhibition_are_by_machine():
    c = config()
    assert c["route"]["group_by"] == ["machine_id", "alertname"]
    (inhibit,) = c["inhibit_rules"]
    assert inhibit["source_matchers"] == ['alertname="MachineSensorFault"']
    assert inhibit["target_matchers"] == ['alertname="MachineFault"']
    assert "machine_id" in inhibit["equal"]
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}
    assert {"MachineSensorFault", "MachineFault"} <= alerts


def machine_alert(alertname: str, machine_id: str, severity: str, **labels: str) -> dict:
    return {
        "labels": {"alertname": alertname, "namespace": "drsn", "machine_id": machine_id, "severity": severity}
        | labels,
        "annotations": {"summary": f"{alertname} on {machine_id}"},
    }


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    if not alertmanager_exe():
        pytest.skip("prometheus-alertmanager (Debian package, which .ci/run installs) is not on PATH")
    am = Alertmanager(config(), tmp_path_factory.mktemp("alertmanager"))
    try:
        yield am
    finally:
        am.stop()


def wait_for(check, within: float = 30):
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_sensor_fault_inhibits_the_machines_fault(alertmanager):
    """press-1 has a MachineSensorFault and a MachineFault: the fault is inhibited. press-2's fault is not: the
    inhibition is per machine."""
    alertmanager.post_alerts(
        [
            machine_alert("MachineSensorFault", "press-1", "warning", sensor_id="nde"),
            machine_alert("MachineFault", "press-1", "critical", sensor_id="de", **{"class": "ball_014", "zone": "D"}),
            machine_alert("MachineFault", "press-2", "critical", sensor_id="de", **{"class": "ball_014", "zone": "D"}),
        ]
    )

    def states():
        got = {(a["labels"]["alertname"], a["labels"]["machine_id"]): a["status"] for a in alertmanager.alerts()}
        return got if len(got) >= 3 and got[("MachineFault", "press-1")]["state"] == "suppressed" else None

    got = wait_for(states)
    assert got[("MachineFault", "press-1")]["inhibitedBy"], got
    assert got[("MachineFault", "press-2")] == {"state": "active", "silencedBy": [], "inhibitedBy": []}
    assert got[("MachineSensorFault", "press-1")]["state"] == "active"


def test_amtool_acknowledge_and_shelve(alertmanager):
    """The README's amtool commands, as written there, against the real Alertmanager: query a machine's alerts,
    silence them (acknowledge: a few hours; shelve: days), find the silence, expire it."""
    url = f"--alertmanager.url={alertmanager.url}"
    alertmanager.post_alerts(
        [machine_alert("MachineFault", "fan-7", "warning", sensor_id="de", **{"class": "outer_race_014", "zone": "C"})]
    )
    wait_for(lambda: "MachineFault" in amtool(url, "alert", "query", "machine_id=fan-7").stdout)
    ack = amtool(
        url,
        "silence",
        "add",
        "machine_id=fan-7",
        "alertname=MachineFault",
        "--duration=8h",
        "--author=j.smith",
        "--comment=ack: bearing ordered, work order 4711",
    )
    assert ack.returncode == 0, ack.stderr
    silence_id = ack.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", silence_id), ack.stdout
    shelve = amtool(url, "silence", "add", "machine_id=fan-7", "--duration=14d", "--comment=shelved: out of service")
    assert shelve.returncode == 0, shelve.stderr
    # Silenced: gone from the default (active) query, listed with --silenced.
    wait_for(lambda: "MachineFault" not in amtool(url, "alert", "query", "machine_id=fan-7").stdout)
    assert "MachineFault" in amtool(url, "alert", "query", "--silenced", "machine_id=fan-7").stdout
    listed = amtool(url, "silence", "query", "machine_id=fan-7")
    assert silence_id in listed.stdout and "work order 4711" in listed.stdout, listed.stdout
    for sid in (silence_id, shelve.stdout.strip()):
        expired = amtool(url, "silence", "expire", sid)
        assert expired.returncode == 0, expired.stderr
    wait_for(lambda: "MachineFault" in amtool(url, "alert", "query", "machine_id=fan-7").stdout)
