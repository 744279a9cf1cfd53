"""deploy/kubernetes: every overlay renders, validates strictly against the oldest and newest supported Kubernetes,
and agrees with itself and with the real binary (listeners and ports, selectors, env names, grace period, probes)."""

from __future__ import annotations

import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support import (
    DEPLOY,
    LISTENERS,
    REPO,
    TARGETS,
    binary,
    help_env_names,
    help_listen_env_names,
    one,
    pod_configmap_env,
    render,
)

# preStop sleep needs Kubernetes 1.30 (beta, on by default); deploy/README.md states it.
OLDEST = "1.30.0"
NEWEST = kubernetes_validate.latest_version()
CRD_GROUP = "monitoring.coreos.com/"
WORKLOADS = ("cpu", "gpu", "cpu+tls", "gpu+tls")


def humantime_seconds(text: str) -> float:
    """The few humantime forms the manifests use: 10s, 500ms, 2m, 1h, and sums such as 1m30s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unparsed duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def container(objs) -> dict:
    (c,) = one(objs, "Deployment", "drsn-serve")["spec"]["template"]["spec"]["containers"]
    return c


def pod_spec(objs) -> dict:
    return one(objs, "Deployment", "drsn-serve")["spec"]["template"]["spec"]


def pod_env(objs) -> dict[str, str]:
    """The server's settings in a pod: the ConfigMap's, then the container's literal env (which wins)."""
    env = pod_configmap_env(objs)
    env.update({e["name"]: e["value"] for e in container(objs).get("env", []) if "value" in e})
    return env


def truthy(value: str | None) -> bool:
    return (value or "false").lower() in ("true", "1", "yes", "on")


def container_ports(objs) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(objs)["ports"]}


@pytest.mark.parametrize("target", TARGETS)
def test_renders(target):
    objs = render(target)
    assert objs, f"{target} rendered nothing"
    for o in objs:
        assert o["metadata"].get("namespace") or o["kind"] == "Namespace", f"{o['kind']} {o['metadata']} unplaced"


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("target", TARGETS)
def test_validates_strictly(target, version):
    failures = []
    for o in render(target):
        if o["apiVersion"].startswith(CRD_GROUP):
            continue  # CRDs: test_custom_resources_structure
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            failures.append(f"{o['kind']}/{o['metadata']['name']}: {getattr(e, 'message', e)}")
    assert not failures, "\n".join(failures)


# The Prometheus Operator CRD fields these manifests use, with the CRD's own duration pattern. Not the whole CRD
# (no schema package for it is installable here): additionalProperties=false catches misspelt or misplaced fields
# among these; a new field needs adding here.
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STR_MAP},
}
SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": STR_MAP, "matchExpressions": {"type": "array"}},
}


def crd(kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
    }


CRD_SCHEMAS = {
    "PodMonitor": crd(
        "PodMonitor",
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": SELECTOR,
                "namespaceSelector": {"type": "object"},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                        },
                    },
                },
            },
        },
    ),
    "PrometheusRule": crd(
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                    "properties": {
                                        "record": {"type": "string"},
                                        "alert": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": STR_MAP,
                                        "annotations": STR_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    ),
}


def test_custom_resources_structure():
    crs = [o for o in render("monitoring") if o["apiVersion"].startswith(CRD_GROUP)]
    assert sorted(o["kind"] for o in crs) == ["PodMonitor", "PrometheusRule"]
    for o in crs:
        jsonschema.validate(o, CRD_SCHEMAS[o["kind"]])


def test_the_binarys_listeners_are_the_ones_deploy_knows():
    """A listener added to `drsn-serve serve` fails here until deploy/ gives it a port (support.LISTENERS)."""
    assert help_listen_env_names() == set(LISTENERS.values())


@pytest.mark.parametrize("target", WORKLOADS)
def test_container_ports_match_the_binarys_listeners(target):
    """One named container port per listener, at the port of the address the pod's settings give it, on every
    interface (the defaults are loopback only)."""
    objs = render(target)
    env, ports = pod_env(objs), container_ports(objs)
    assert set(ports) == set(LISTENERS), f"container ports {sorted(ports)}, listeners {sorted(LISTENERS)}"
    assert all(p["protocol"] == "TCP" for p in container(objs)["ports"])
    for name, variable in LISTENERS.items():
        assert variable in env, f"{variable} is not set: the {name} listener would serve loopback only"
        host, _, port = env[variable].rpartition(":")
        assert host in ("0.0.0.0", "[::]"), f"{variable}={env[variable]} is not reachable from the pod's network"
        assert int(port) == ports[name], f"{variable}={env[variable]} but container port {name} is {ports[name]}"


@pytest.mark.parametrize("target", WORKLOADS)
def test_service_ports_match_the_container_ports(target):
    """Services expose the gRPC and REST listeners (not metrics: scraped and probed on the pods), each on its
    container port's number, with the appProtocol the listener speaks (https once TLS is on)."""
    objs = render(target)
    env, ports = pod_env(objs), container_ports(objs)
    tls = bool(env.get("DRSN_TLS_CERT"))
    for s in (o for o in objs if o["kind"] == "Service"):
        exposed = {p["name"]: p for p in s["spec"]["ports"]}
        assert set(exposed) == {"grpc", "http"}, s["metadata"]["name"]
        for name, p in exposed.items():
            assert p["targetPort"] == name and p["port"] == ports[name] and p["protocol"] == "TCP"
        assert exposed["grpc"]["appProtocol"] == "grpc"
        assert exposed["http"]["appProtocol"] == ("https" if tls else "http")


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# What the binary serves on the metrics listener for probes (test_live asks the real server for each path).
PROBE_PATHS = {"/healthz", "/readyz"}


@pytest.mark.parametrize("target", WORKLOADS)
def test_probes_are_http_on_the_metrics_port(target):
    """httpGet on the metrics listener, which the TLS component leaves plaintext: works with TLS on gRPC and REST.
    HTTPS exactly when /metrics is served over TLS, and never with a client CA (the kubelet has no certificate)."""
    objs = render(target)
    c, env = container(objs), pod_env(objs)
    metrics_tls = truthy(env.get("DRSN_METRICS_TLS")) and bool(env.get("DRSN_TLS_CERT"))
    assert not (metrics_tls and env.get("DRSN_TLS_CLIENT_CA")), "mutual TLS on /metrics: the kubelet cannot probe"
    for probe in PROBES:
        handlers = set(c[probe]) & {"grpc", "tcpSocket", "httpGet", "exec"}
        assert handlers == {"httpGet"}, f"{probe}: {c[probe]}"
        get = c[probe]["httpGet"]
        assert get["port"] in ("metrics", container_ports(objs)["metrics"]), f"{probe} is not on the metrics port"
        assert get["path"] in PROBE_PATHS
        assert get.get("scheme", "HTTP") == ("HTTPS" if metrics_tls else "HTTP"), f"{probe}: {get}"
    # Started and ready mean SERVING; so does alive: a pod whose inference workers all died is restarted.
    assert {c[probe]["httpGet"]["path"] for probe in PROBES} == {"/readyz"}
    start = c["startupProbe"]
    # Budget for ONNX Runtime to load and the sessions to warm up.
    assert start["failureThreshold"] * start["periodSeconds"] >= 60
    # A drain's /readyz 503 lasts at most DRSN_DRAIN_TIMEOUT; liveness must not give up within it.
    live = c["livenessProbe"]
    drain = humantime_seconds(env.get("DRSN_DRAIN_TIMEOUT", "10s"))
    assert live["failureThreshold"] * live["periodSeconds"] > drain


@pytest.mark.parametrize("target", WORKLOADS)
def test_grace_period_covers_prestop_and_drain(target):
    objs = render(target)
    spec, c = pod_spec(objs), container(objs)
    prestop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = humantime_seconds(pod_configmap_env(objs).get("DRSN_DRAIN_TIMEOUT", "10s"))
    margin = 5
    assert spec["terminationGracePeriodSeconds"] >= prestop + drain + margin


@pytest.mark.parametrize("target", WORKLOADS)
def test_security_context(target):
    objs = render(target)
    spec, c = pod_spec(objs), container(objs)
    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] and pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("runAsUser", 65532) == 65532
    assert spec["automountServiceAccountToken"] is False
    # The image has no writable path and needs none: no emptyDir smuggled in.
    assert all("emptyDir" not in v for v in spec.get("volumes", []))


@pytest.mark.parametrize("target", WORKLOADS)
def test_services_and_budget_select_the_pods(target):
    objs = render(target)
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in container(objs)["ports"]}
    services = [o for o in objs if o["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"drsn-serve", "drsn-serve-headless"}
    for s in services:
        assert s["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in s["spec"]["ports"]} <= ports
    assert one(objs, "Service", "drsn-serve-headless")["spec"]["clusterIP"] == "None"
    assert one(objs, "Service", "drsn-serve")["spec"]["type"] == "ClusterIP"
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert one(objs, "Deployment")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# The ports each kind of peer may reach: gateways and clients the APIs (token and TLS protected), Prometheus the
# plaintext, tokenless metrics listener. Kubelet probes come from the node, which most network plugins admit.
CLIENT_LABEL = {"drsn-serve/client": "true"}
POLICY_PORTS = {"clients": {"grpc", "http"}, "prometheus": {"metrics"}}


def policy_port_name(port: dict, ports: dict[str, int]) -> str:
    """The container port a NetworkPolicy port entry names, by name or number (TCP only; no ranges)."""
    assert port.get("protocol", "TCP") == "TCP" and "endPort" not in port, port
    by_number = {number: name for name, number in ports.items()}
    name = port["port"] if isinstance(port["port"], str) else by_number.get(port["port"])
    assert name in ports, f"NetworkPolicy port {port['port']!r} is no container port ({ports})"
    return name


def restricted(peer: dict) -> bool:
    """A peer that names its pods by label (not a whole namespace, not everyone, not an IP range)."""
    return set(peer) <= {"namespaceSelector", "podSelector"} and bool(peer.get("podSelector", {}).get("matchLabels"))


@pytest.mark.parametrize("target", WORKLOADS)
def test_network_policy_admits_only_the_listeners(target):
    """One NetworkPolicy selects the pods, isolates them both ways, and admits ingress only on the container ports,
    each from labelled peers: grpc and http from pods labelled drsn-serve/client, metrics from Prometheus in the
    namespace the monitoring kustomization uses. No egress at all. (test_validates_strictly covers its schema.)"""
    objs = render(target)
    dep = one(objs, "Deployment", "drsn-serve")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = container_ports(objs)
    policy = one(objs, "NetworkPolicy")
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == dep["metadata"]["namespace"]
    selector = spec["podSelector"]
    assert set(selector) == {"matchLabels"} and selector["matchLabels"], "select the pods by label, not everything"
    assert selector["matchLabels"].items() <= pod_labels.items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert spec.get("egress", []) == [], "the server opens no connections"

    admitted: dict[str, list[dict]] = {}
    for rule in spec["ingress"]:
        assert rule.get("ports"), f"a rule without ports admits every port: {rule}"
        assert rule.get("from") and all(restricted(p) for p in rule["from"]), f"a rule open to anyone: {rule}"
        for port in rule["ports"]:
            admitted.setdefault(policy_port_name(port, ports), []).extend(rule["from"])
    assert set(admitted) == set(ports), f"ingress ports {sorted(admitted)}, container ports {sorted(ports)}"

    # Where the monitoring kustomization expects the Prometheus stack (the adapter's rules live there too).
    monitoring_ns = one(render("monitoring"), "ConfigMap", "drsn-prometheus-adapter")["metadata"]["namespace"]
    for name, peers in admitted.items():
        if name in POLICY_PORTS["clients"]:
            assert all(p["podSelector"]["matchLabels"] == CLIENT_LABEL for p in peers), f"{name}: {peers}"
        else:
            assert name in POLICY_PORTS["prometheus"], name
            for p in peers:
                assert p["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": monitoring_ns}}, p


def test_monitoring_matches_the_pods():
    pods = render("cpu")
    pod_labels = one(pods, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in container(pods)["ports"]}
    namespace = one(pods, "Deployment")["metadata"]["namespace"]
    mon = render("monitoring")
    pm = one(mon, "PodMonitor")
    assert pm["metadata"]["namespace"] == namespace
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["spec"]["jobLabel"] in pod_labels and pod_labels[pm["spec"]["jobLabel"]] == "drsn-serve"
    metrics_tls = truthy(pod_env(pods).get("DRSN_METRICS_TLS"))
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in ports and ep["port"] == "metrics"
        assert ep.get("scheme", "http") == ("https" if metrics_tls else "http")
    hpa = one(mon, "HorizontalPodAutoscaler")
    dep = one(pods, "Deployment")
    assert hpa["metadata"]["namespace"] == namespace
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "drsn-serve")
    adapter = yaml.safe_load(one(mon, "ConfigMap", "drsn-prometheus-adapter")["data"]["config.yaml"])
    served = {r["name"]["as"] for r in adapter["rules"]}
    for m in hpa["spec"]["metrics"]:
        assert m["type"] == "Pods" and m["pods"]["metric"]["name"] in served
    assert hpa["spec"]["minReplicas"] >= 2, "the PodDisruptionBudget lets one go: keep two"
    assert dep["spec"]["replicas"] >= 2
    rule = one(mon, "PrometheusRule")
    assert rule["metadata"]["namespace"] == namespace
    for name, key, source in (
        ("drsn-serve-dashboard", "drsn-serve.json", "dashboard.json"),
        ("drsn-serve-fleet-dashboard", "drsn-serve-fleet.json", "fleet.json"),
    ):
        dash = one(mon, "ConfigMap", name)
        assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dash["data"] == {key: (DEPLOY / "grafana" / source).read_text()}


@pytest.mark.parametrize("target", WORKLOADS)
def test_env_names_are_real(target):
    """Every variable set for the server is one `drsn-serve serve --help` documents."""
    objs = render(target)
    real = help_env_names("serve")
    names = set(pod_configmap_env(objs))
    names |= {e["name"] for e in container(objs).get("env", [])}
    for cm in (o for o in objs if o["kind"] == "ConfigMap"):
        names |= set(cm["data"])
    unknown = sorted(names - real)
    assert not unknown, f"not variables of `drsn-serve serve`: {unknown}"


def test_gpu_overlay():
    objs = render("gpu")
    spec, c = pod_spec(objs), container(objs)
    env = pod_configmap_env(objs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert (env["DRSN_DEVICE"], env["DRSN_MAX_BATCH"], env["DRSN_WORKERS"], env["DRSN_MAX_QUEUE_DELAY"]) == (
        "cuda",
        "1024",
        "2",
        "2ms",
    )
    assert c["image"].endswith("-cuda")
    cpu = pod_configmap_env(render("cpu"))
    assert cpu["DRSN_DEVICE"] == "cpu"
    # Workers follow the CPU limit, not the node's cores.
    assert int(cpu["DRSN_WORKERS"]) == int(container(render("cpu"))["resources"]["limits"]["cpu"])


def test_gpu_settings_are_accepted_by_the_binary():
    """The GPU overlay's settings parse and validate; on a machine without CUDA only the device fails."""
    env = {k: v for k, v in pod_configmap_env(render("gpu")).items() if k != "DRSN_MODEL"}
    env.update({name: "127.0.0.1:0" for name in LISTENERS.values()})
    env["PATH"] = "/usr/bin:/bin"
    out = subprocess.run([str(binary()), "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    if out.returncode == 0:  # pragma: no cover - a machine with CUDA would serve; not expected here
        return
    assert out.returncode != 2, f"clap refused a setting:\n{out.stderr}"
    assert "CUDA" in out.stderr, out.stderr


def test_model_path_matches_the_card():
    """DRSN_MODEL names a card in models/ whose ONNX file exists; the image copies models/*.json and *.onnx."""
    path = pod_configmap_env(render("cpu"))["DRSN_MODEL"]
    assert path.startswith("/app/models/")
    card = REPO / "models" / path.removeprefix("/app/models/")
    assert card.is_file(), f"{card} does not exist"
    onnx = yaml.safe_load(card.read_text())["onnx"]
    assert (card.parent / onnx).is_file() and onnx.endswith(".onnx")
