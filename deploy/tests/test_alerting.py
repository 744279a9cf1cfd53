"""End to end, a machine's fault from the signal to a notification and back: the real server (--machine-metrics,
the CPU overlay's settings), a real Prometheus scraping it every second with rules.yml (the machine alerts' `for`
and `keep_firing_for` shortened to 1s, evaluated every second) and sending to a real Alertmanager (the example
configuration of deploy/alertmanager, its receivers pointed at a webhook in this test, its waits shortened to 1s).
A real-time replay of an inner race fault as machine `e2e-pump` must bring a firing MachineFault with that machine
and an inner race class to the webhook, through the receiver its severity routes to; a replay of a healthy
recording as the same machine and sensor must then bring the resolved notification.

Needs a binary with the per-machine condition (`serve --machine-metrics`, `replay --machine-id`): an older one
fails this test with a message saying so, never skips it."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from support import (
    DEPLOY,
    FIXTURES,
    Alertmanager,
    MachineReplay,
    Prometheus,
    Server,
    Webhook,
    alertmanager_exe,
    local_pod_env,
    long_recording,
    require_machine_metrics,
)
from test_alertmanager import RECEIVER
from test_live import prometheus_config
from test_rules_dashboard import MACHINE_GROUP

MACHINE = "e2e-pump"
WAIT_S = 90  # each wait: for the firing notification, then for the resolved one
RECORDING_S = 300
FAULTY = "12k_Drive_End_IR007_0_105.mat"
HEALTHY = "normal_0_97.mat"


def fast_rules(path) -> str:
    """rules.yml with the machine alerts' `for` and `keep_firing_for` at 1s, written to path."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    (group,) = [g for g in rules["groups"] if g["name"] == MACHINE_GROUP]
    for rule in group["rules"]:
        if "alert" in rule:
            assert rule["for"] and rule["keep_firing_for"], rule["alert"]
            rule["for"] = rule["keep_firing_for"] = "1s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return str(path)


def fast_alertmanager_config(webhook_url: str) -> dict:
    """deploy/alertmanager/alertmanager.yml with every receiver posting to the test's webhook (resolved ones too),
    and 1s group waits and intervals."""
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook.update(url=f"{webhook_url}/{receiver['name']}", send_resolved=True)
    routes = [config["route"]]
    while routes:
        route = routes.pop()
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
        routes += route.get("routes", [])
    return config


@pytest.fixture
def stack(tmp_path):
    require_machine_metrics()
    if not alertmanager_exe():
        pytest.skip("prometheus-alertmanager (Debian package, which .ci/run installs) is not on PATH")
    webhook = Webhook()
    am = prom = server = None
    try:
        am = Alertmanager(fast_alertmanager_config(webhook.url), tmp_path / "alertmanager")
        server = Server(env=local_pod_env(), args=["--machine-metrics"])
        config, _ = prometheus_config(server.metrics_addr)
        config["rule_files"] = [fast_rules(tmp_path / "rules.yml")]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [am.url.removeprefix("http://")]}]}]}
        prom = Prometheus(config, tmp_path)
        yield {"server": server, "prom": prom, "am": am, "webhook": webhook, "tmp": tmp_path}
    finally:
        if prom:
            prom.stop()
        if server:
            server.stop()
        if am:
            am.stop()
        webhook.stop()


def machine_fault_alerts(webhook: Webhook) -> list[dict]:
    return [
        a
        for a in webhook.alerts()
        if a["labels"].get("alertname") == "MachineFault" and a["labels"].get("machine_id") == MACHINE
    ]


def report(stack, replay: MachineReplay | None) -> str:
    """What the webhook got, what Prometheus and Alertmanager hold, the server's last lines and the replay's
    failures: printed when a wait runs out."""
    prom = stack["prom"]
    alerts = [(a["labels"], a["state"]) for a in prom.api("alerts")["alerts"]]
    info = [s["metric"] for s in prom.query(f'drsn_machine_info{{machine_id="{MACHINE}"}}')]
    am = [(a["labels"], a["status"]["state"]) for a in stack["am"].alerts()]
    return (
        f"\nwebhook received:\n{stack['webhook'].summary()}\n"
        f"Prometheus alerts: {json.dumps(alerts)}\n"
        f"drsn_machine_info for {MACHINE}: {json.dumps(info)}\n"
        f"Alertmanager alerts: {json.dumps(am)}\n"
        f"replay failures: {(replay.failures if replay else [])[:2]}\n"
        "server log:\n" + "\n".join(stack["server"].lines[-15:])
    )


def wait_until(stack, replay, check, what: str):
    deadline = time.monotonic() + WAIT_S
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S}s" + report(stack, replay))
        time.sleep(0.5)


def test_fault_fires_and_resolves(stack):
    webhook = stack["webhook"]
    # Same file name in both folders: the same sensor of the same machine, first faulty, then healthy.
    faulty = long_recording(FIXTURES / FAULTY, stack["tmp"] / "faulty" / "de.wav", RECORDING_S)
    healthy = long_recording(FIXTURES / HEALTHY, stack["tmp"] / "healthy" / "de.wav", RECORDING_S)

    replay = MachineReplay(stack["server"].grpc_addr, faulty, MACHINE)
    try:

        def firing():
            return [
                a
                for a in machine_fault_alerts(webhook)
                if a["status"] == "firing" and a["labels"].get("class", "").startswith("inner_race_")
            ]

        fired = wait_until(stack, replay, firing, f"firing MachineFault for {MACHINE} with an inner race class")
    finally:
        replay.stop()
    alert = fired[0]
    labels = alert["labels"]
    assert labels["sensor_id"], labels
    # Severity from the zone, and the receiver the example routes that severity to.
    zone_severity = {"D": "critical", "C": "warning"}.get(labels.get("zone", ""), "info")
    assert labels["severity"] == zone_severity, labels
    assert alert["receiver"] == RECEIVER[labels["severity"]], alert
    assert "since" in alert["annotations"]["description"], alert["annotations"]
    fired_at = len(webhook.alerts())

    replay = MachineReplay(stack["server"].grpc_addr, healthy, MACHINE)
    try:

        def resolved():
            # Every MachineFault of the machine (one per class and zone it had) last notified as resolved, the
            # first one among them, after the healthy replay began.
            last = {}
            for a in machine_fault_alerts(webhook):
                last[a["fingerprint"]] = a
            later = [a for a in webhook.alerts()[fired_at:] if a["fingerprint"] == alert["fingerprint"]]
            done = all(a["status"] == "resolved" for a in last.values())
            return done and any(a["status"] == "resolved" for a in later)

        wait_until(stack, replay, resolved, f"resolved MachineFault for {MACHINE} after the healthy replay")
        assert not replay.failures, replay.failures[0]
    finally:
        replay.stop()
