"""deploy/docker, .dockerignore and deploy/compose, read without a container engine (none runs here; make image-test
builds and runs the image where podman can): stages, settings, the build context, and the compose wiring."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from support import DEPLOY, LISTENERS, REPO, help_env_names, one, pod_configmap_env, render

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
# Set in images but read by the loader or the NVIDIA toolkit, not by drsn-serve.
NOT_SERVER_ENV = {"LD_LIBRARY_PATH", "NVIDIA_DRIVER_CAPABILITIES"}


def makefile_var(name: str) -> str:
    if name == "ORT_VERSION":  # pinned with its hash in deploy/ort; the Makefile reads it from there
        m = re.search(r"^onnxruntime==([0-9.]+)", (REPO / "deploy/ort/onnxruntime-cpu.txt").read_text(), re.M)
    else:
        m = re.search(rf"^{name} := (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, name
    return m.group(1).strip()


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined), in file order."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)$", line, re.I)
        if m:
            current = m.group(2)
            out[current] = [line]
        else:
            out[current].append(line)
    return out


def env_of(instructions: list[str]) -> dict[str, str]:
    env = {}
    for line in instructions:
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def lineage(stage: str) -> list[str]:
    """The stage and the stages it is built FROM, base first (ENV, EXPOSE and ENTRYPOINT are inherited)."""
    s = stages()
    chain = [stage]
    while True:
        base = re.match(r"FROM\s+(\S+)", s[chain[0]][0], re.I).group(1)
        if base not in s:
            return chain
        chain.insert(0, base)


def effective(stage: str) -> tuple[dict[str, str], set[int], str | None]:
    """A stage's ENV, EXPOSEd ports and ENTRYPOINT, its bases' included."""
    env, exposed, entrypoint = {}, set(), None
    for name in lineage(stage):
        lines = stages()[name]
        env.update(env_of(lines))
        for line in lines:
            if line.startswith("EXPOSE "):
                exposed |= {int(p.split("/")[0]) for p in line.split()[1:]}
            elif line.startswith("ENTRYPOINT "):
                entrypoint = line.removeprefix("ENTRYPOINT ")
    return env, exposed, entrypoint


SERVE = '["/usr/local/bin/drsn-serve", "serve"]'


def serving_stages() -> list[str]:
    return [name for name in stages() if name and effective(name)[2] == SERVE]


def pod_ports() -> dict[str, int]:
    (c,) = one(render("cpu"), "Deployment", "drsn-serve")["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "no syntax directive (offline builders)"
    s = stages()
    globals_ = " ".join(s[""])
    for arg in ("RUST_IMAGE", "RUNTIME_IMAGE"):
        assert f"ARG {arg}=" in globals_, f"base image {arg} must be a build argument"
    for name in ("builder", "runtime", "prebuilt", "cuda", "cuda-prebuilt", "load", "release"):
        assert name in s, f"no stage {name}"
    assert list(s)[-1] == "release", "the default target is the CPU release image"
    assert "RUN make ort PYTHON=python3" in s["builder"], "ONNX Runtime comes from the pinned wheel, as `make ort`"
    assert "RUN make ort-gpu PYTHON=python3" in s["ort-gpu"]
    runtime = s["runtime"]
    assert "USER 65532:65532" in runtime
    assert "EXPOSE 50051 8000 9090" in runtime
    assert 'ENTRYPOINT ["/usr/local/bin/drsn-serve", "serve"]' in runtime
    assert any(
        line.startswith("COPY models/*.json models/*.onnx models/*.golden.npz /app/models/") for line in runtime
    ), "the card, its ONNX file and its golden file (the server checks it at start-up)"
    assert not any(line.startswith(("VOLUME", "RUN")) for line in runtime), "runtime writes nothing at build time"
    assert "ENV DRSN_DEVICE=cuda" in " ".join(s["cuda-runtime"])


def test_image_settings():
    s = stages()
    env = env_of(s["runtime"])
    assert env["DRSN_LISTEN"] == "0.0.0.0:50051" and env["DRSN_METRICS_LISTEN"] == "0.0.0.0:9090"
    assert env["DRSN_HTTP_LISTEN"] == "0.0.0.0:8000"
    # Same model path as the pods' ConfigMap; the ONNX Runtime version as the Makefile's.
    assert env["DRSN_MODEL"] == pod_configmap_env(render("cpu"))["DRSN_MODEL"]
    (ort_arg,) = [line for line in s["runtime"] if line.startswith("ARG ORT_VERSION=")]
    assert ort_arg.split("=")[1] == makefile_var("ORT_VERSION")
    assert env["ORT_DYLIB_PATH"] == "/app/ort/libonnxruntime.so.${ORT_VERSION}"
    real = help_env_names("serve")
    for stage in ("runtime", "prebuilt", "cuda-runtime", "cuda-prebuilt", "cuda", "release"):
        unknown = set(env_of(s[stage])) - real - NOT_SERVER_ENV
        assert not unknown, f"{stage}: not variables of `drsn-serve serve`: {unknown}"
    unknown = set(env_of(s["load"])) - help_env_names("replay") - {"STREAMS"}
    assert not unknown, f"load: not variables of `drsn-serve replay`: {unknown}"


def test_every_serving_stage_listens_and_exposes_every_port():
    """Each stage that runs the server (itself or through its bases) sets every listener the pods set, to the
    same address, and EXPOSEs exactly those ports: the Deployment's container ports."""
    names = serving_stages()
    assert {"prebuilt", "cuda-prebuilt", "cuda", "release"} <= set(names), names
    assert "load" not in names
    pods, ports = pod_configmap_env(render("cpu")), pod_ports()
    for stage in names:
        env, exposed, _ = effective(stage)
        for name, variable in LISTENERS.items():
            assert env.get(variable) == pods[variable], f"{stage}: {variable}={env.get(variable)}"
            assert int(env[variable].rpartition(":")[2]) == ports[name]
        assert exposed == set(ports.values()), f"{stage}: EXPOSE {sorted(exposed)}, pod ports {ports}"


def test_cuda_wheels_are_pinned():
    lines = [ln for ln in (DEPLOY / "docker" / "cuda-libs.txt").read_text().splitlines() if not ln.startswith("#")]
    names = set()
    for line in filter(None, lines):
        m = re.fullmatch(r"([a-z0-9-]+)==[\w.]+ --hash=sha256:[0-9a-f]{64}", line)
        assert m, f"not pinned with a hash: {line}"
        names.add(m.group(1))
    for needed in ("nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-cufft", "nvidia-curand"):
        assert needed in names


# --- .dockerignore: Docker's rules (filepath.Match per pattern, matched against the path and each parent;
# the last matching pattern decides, `!` re-includes).
def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        out.append((include, line.lstrip("!").strip("/")))
    return out


def _match(pattern: str, path: str) -> bool:
    # filepath.Match: `*` and `?` never cross `/`. Compare segment by segment.
    p, s = pattern.split("/"), path.split("/")
    return len(p) == len(s) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(s, p, strict=True))


def in_context(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for include, pattern in dockerignore_patterns():
        if any(_match(pattern, p) for p in prefixes):
            included = include
    return included


def context_files() -> list[str]:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = set(tracked.split())
    for built in ("target/release/drsn-serve", *(str(p.relative_to(REPO)) for p in REPO.glob(".ort/*/*"))):
        files.add(built)
    return sorted(f for f in files if in_context(f))


def copy_sources() -> list[tuple[str, str]]:
    out = []
    for stage, lines in stages().items():
        for line in lines:
            if line.startswith("COPY ") and "--from=" not in line:
                out += [(stage, src) for src in line.split()[1:-1]]
    return out


@pytest.mark.parametrize("stage,src", copy_sources())
def test_every_copy_source_is_in_the_context(stage, src):
    pattern = src.rstrip("/")
    if src.startswith(".ort/gpu") and not (REPO / ".ort" / "gpu").is_dir():
        # Not installed here (make ort-gpu): check the rule lets its library through.
        assert in_context(f"{pattern}/libonnxruntime.so.{makefile_var('ORT_VERSION')}")
        return
    files = context_files()
    hits = [f for f in files if _match(pattern, f) or f.startswith(pattern + "/")]
    assert hits, f"{stage}: COPY {src} finds nothing in the build context (.dockerignore?)"


def test_context_leaves_out_the_heavy_and_the_private():
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "target/release/deps/drsn_serve-0123.d",
        "target/debug/drsn-serve",
        "models/training/runs/x/model.pt",
        "models/drsn_cw_cwru.pt",
        ".ort/cpu.download/x.whl",
        "tests/streams.rs",
    ):
        assert not in_context(path), f"{path} would be sent to the builder"
    # What is there: with CARGO_TARGET_DIR elsewhere, ./target holds no binary (the image's prebuilt stage needs one).
    here = [REPO / f for f in context_files() if not f.startswith(".ort/gpu")]
    size = sum(p.stat().st_size for p in here if p.is_file())
    assert size < 100 << 20, f"CPU build context is {size >> 20} MiB"


# --- compose
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def build_target(service: dict) -> str:
    """The stage a compose service builds (`${DRSN_TARGET:-release}` read as its default)."""
    return re.sub(r"\$\{\w+:-(\w[\w-]*)\}", r"\1", service["build"]["target"])


def test_compose_wiring():
    c = compose()
    services = c["services"]
    assert set(services) == {"drsn-serve", "load", "prometheus", "grafana"}
    names = set(stages())
    for svc in ("drsn-serve", "load"):
        build = services[svc]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build_target(services[svc]) in names
    for svc in services.values():
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            assert (COMPOSE.parent / host).exists(), f"{host} does not exist"
    unknown = set(services["drsn-serve"]["environment"]) - help_env_names("serve")
    assert not unknown, f"not in `drsn-serve serve --help` (an older binary? rebuild it): {sorted(unknown)}"
    # Every port the image exposes is published, on this machine only, at the same number.
    published = [re.fullmatch(r"127\.0\.0\.1:(\d+):(\d+)", p) for p in services["drsn-serve"]["ports"]]
    assert all(published), services["drsn-serve"]["ports"]
    assert all(m.group(1) == m.group(2) for m in published)
    image = effective(build_target(services["drsn-serve"]))
    assert {int(m.group(2)) for m in published} == image[1]
    assert set(services["load"]["environment"]) - {"STREAMS"} <= help_env_names("replay")
    # Prometheus (deploy/prometheus mounted) scrapes the service by name on the image's metrics port, and
    # Grafana's data source points at the prometheus service.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (target,) = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    metrics_port = env_of(stages()["runtime"])["DRSN_METRICS_LISTEN"].rsplit(":", 1)[1]
    assert target == f"drsn-serve:{metrics_port}"
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "drsn-serve.yml").read_text())
    # Every dashboard is mounted into the folder the file provider loads.
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    for dashboard in ("dashboard.json", "fleet.json"):
        mounted = mounts[f"../grafana/{dashboard}"]
        assert Path(mounted).parent == Path(provider["providers"][0]["options"]["path"]), dashboard
