# drsn-serve: set-up, tests and the model study. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQS := models/training/requirements.txt
DEPLOY_REQS := deploy/tests/requirements.txt
V2_REQS := tests/v2/requirements.txt
CLIENT_REQS := clients/python/requirements-dev.txt
# The ONNX Runtime release, pinned (with its hash) in one place; the build, the image and the tests read it there.
ORT_VERSION := $(shell sed -n 's/^onnxruntime==\([0-9.]*\).*/\1/p' deploy/ort/onnxruntime-cpu.txt)
ORT_LIB := libonnxruntime.so.$(ORT_VERSION)
# Where cargo puts what it builds: $$CARGO_TARGET_DIR when set (cargo reads it the same way), else target/. The
# Python tests find the binary through DRSN_SERVE_BIN.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN := $(TARGET_DIR)/release/drsn-serve
export DRSN_SERVE_BIN := $(abspath $(BIN))
# Where pip fetches the ONNX Runtime wheel for: the library inside serves any Python, or none.
WHEEL_TARGET := --only-binary=:all: --no-deps --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64

.PHONY: help serve test lint pytest rust-test v2-test client-test bench-v2 deploy-test deploy-gen image-test local-stack build dist bench soak ort ort-gpu \
	reproduce study venv condition-study

help:
	@echo "make serve      install ONNX Runtime, build, and serve the shipped model (gRPC :50051, metrics :9090)"
	@echo "make test       lint and run every test, Python and Rust (what CI runs)"
	@echo "make bench      raw ONNX Runtime vs end-to-end service throughput, side by side"
	@echo "make dist       the binary as the image ships it (fat LTO), in $(TARGET_DIR)/dist/"
	@echo "make bench-v2   the KServe V2 endpoint against Seldon MLServer 1.7.1 serving the same model (own venv)"
	@echo "make soak       30 minutes of mixed good, bad, slow and vanishing clients; RSS and fds sampled"
	@echo "make ort        ONNX Runtime $(ORT_VERSION) (CPU) from its PyPI wheel, hash-checked, into .ort/cpu"
	@echo "make ort-gpu    the CUDA build (onnxruntime-gpu) into .ort/gpu, for --device cuda"
	@echo "make reproduce  the shipped recipe's study (leave-one-load-out + time split), ship the DRSN, write models/reports/"
	@echo "make study      every recipe tried (models/reports/pilots.json), then make reproduce"
	@echo "make condition-study  the machine-condition settings on the held-out folds: the README's decision table"
	@echo "make deploy-test   deploy/ checks: manifests, rules, dashboard queries against the real server (in make test)"
	@echo "make deploy-gen    regenerate the PrometheusRule from deploy/prometheus/rules.yml"
	@echo "make image-test    build the CPU image with podman (root, Debian packages) and run it: health, uid, drain"
	@echo "make local-stack   the server, Prometheus and a replay load on this machine (deploy/local-stack.sh)"

# ONNX Runtime: download the pinned wheel (pip checks its sha256), keep only the shared libraries.
ort: .ort/cpu/$(ORT_LIB)
ort-gpu: .ort/gpu/$(ORT_LIB)

.ort/%/$(ORT_LIB): deploy/ort/onnxruntime-%.txt
	rm -rf .ort/$*.download && mkdir -p .ort/$*.download
	$(PYTHON) -m pip download --quiet --disable-pip-version-check $(WHEEL_TARGET) --require-hashes \
		-r $< -d .ort/$*.download
	cd .ort/$*.download && $(PYTHON) -m zipfile -e *.whl unpacked
	mkdir -p .ort/$* && cp .ort/$*.download/unpacked/onnxruntime/capi/lib*.so* .ort/$*/
	rm -rf .ort/$*.download
	@test -f $@ && echo "ONNX Runtime $(ORT_VERSION) ($*) installed in .ort/$*"

build:
	cargo build --release --locked

# The binary as the image ships it (profile.dist: fat LTO), in $(TARGET_DIR)/dist/.
dist:
	cargo build --profile dist --locked

serve: ort build
	$(BIN) serve $(ARGS)

bench: ort build
	$(BIN) bench $(ARGS)

# The Open Inference Protocol against Seldon MLServer serving the same model (not in `make test`: a benchmark).
BENCH_VENV := .venv-mlserver
bench-v2: ort build $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python deploy/bench/v2_vs_mlserver.py $(ARGS)

$(BENCH_VENV)/.installed: deploy/bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet -r deploy/bench/requirements.txt
	touch $@

# The test command runs the same soak for 2 minutes.
soak: ort
	DRSN_SOAK_SECONDS=$${DRSN_SOAK_SECONDS:-1800} cargo test --release --locked --test soak -- --nocapture

venv: $(VENV)/.installed

$(VENV)/.installed: $(REQS) $(DEPLOY_REQS) $(V2_REQS) $(CLIENT_REQS) clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQS) -r $(DEPLOY_REQS) -r $(V2_REQS) -r $(CLIENT_REQS)
	touch $@

lint: venv
	$(VENV)/bin/ruff check models/training
	$(VENV)/bin/ruff format --check models/training
	$(VENV)/bin/ruff check deploy
	$(VENV)/bin/ruff format --check deploy
	$(VENV)/bin/ruff check --line-length 120 tests/v2
	$(VENV)/bin/ruff format --check --line-length 120 tests/v2
	cd clients/python && ../../$(VENV)/bin/ruff check . && ../../$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check --line-length 120 examples
	$(VENV)/bin/ruff format --check --line-length 120 examples
	cargo fmt --all --check
	cargo clippy --release --locked --workspace --all-targets -- -D warnings

pytest: venv
	cd models/training && ../../$(PY) -m pytest -q

rust-test: ort
	cargo test --release --locked --workspace

# After rust-test: the Open Inference Protocol conformance tests run the unmodified tritonclient against the binary.
v2-test: venv ort build
	$(PY) -m pytest -q tests/v2

# The gateway client library (clients/python) against real servers: drained, killed, aged out and restarted replicas;
# and the examples that use it.
client-test: venv ort build
	$(PY) -m pytest -q clients/python/tests

# After rust-test: the live checks run the release binary with .ort/ (build is a no-op by then).
deploy-test: venv ort build
	$(PY) -m pytest -q -c deploy/tests/pytest.ini deploy/tests

deploy-gen:
	{ printf '%s\n' '# Generated from deploy/prometheus/rules.yml by `make deploy-gen`: edit that file, not this one.' \
		'apiVersion: monitoring.coreos.com/v1' 'kind: PrometheusRule' 'metadata:' '  name: drsn-serve' \
		'  namespace: drsn' '  labels:' '    app.kubernetes.io/name: drsn-serve' 'spec:'; \
		sed -e 's/^\(.\)/  \1/' deploy/prometheus/rules.yml; } > deploy/kubernetes/monitoring/prometheusrule.yaml

# Not in `make test`: needs root, podman/buildah/mmdebstrap from Debian, and a few minutes.
image-test: venv ort build
	bash deploy/tests/image-test.sh

local-stack: ort build
	bash deploy/local-stack.sh $(ARGS)

test: lint pytest rust-test v2-test client-test deploy-test

reproduce: venv
	cd models/training && ../../$(PY) -m drsntrain reproduce

study: venv
	cd models/training && ../../$(PY) -m drsntrain pareto && ../../$(PY) -m drsntrain reproduce

# Per-window outputs of the fold models (trained here when models/training/runs lacks them: ~8 min on 2 cores) and
# of the shipped model, then the server's own debouncer over them for a grid of settings.
condition-study: venv build
	cd models/training && ../../$(PY) -m drsntrain condition-windows
	$(BIN) condition-study
