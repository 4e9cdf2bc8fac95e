# Everything a fresh machine needs is installed from this file: `make build`, `make test`, `make bench`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLCHAIN := $(BIN)/toolchain
# Longest build first: `make -j2` starts them in this order, so the two slowest (MiniLM's emulated ARM validation,
# the pruned sample's distillation) do not start last and leave one core idle at the end.
MODELS := minilm digits_resnet_pruned digits_mobilenet digits_resnet shapes_detector digits_cnn
TARGETS := x86_64 arm64 cuda
BUILD := build

.PHONY: build test test-all bench coverage clean venv system-deps arm-emulator arm-emulator-optional

venv: $(STAMP)

# torch first and pinned (a plain `torch` requirement pulls a multi-GB CUDA build), then the lock under a torch constraint.
$(STAMP): requirements.lock requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -r requirements.lock
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@if $(BIN)/pip list 2>/dev/null | grep -qi '^nvidia'; then echo "error: a CUDA torch build slipped in" >&2; exit 1; fi
	touch $@

# One report per model; `make -j` builds models in parallel (they share the content-addressed cache).
build: $(STAMP) arm-emulator-optional $(MODELS:%=$(BUILD)/%/report.json)

$(BUILD)/%/report.json: $(STAMP) arm-emulator-optional FORCE
	PATH="$(abspath $(BIN)):$$PATH" $(TOOLCHAIN) build sample_models/$*/build.toml -o $(BUILD)

FORCE:

# Debian packages the tests run for real: the OCI registry that release publishing is tested against (run as root
# on CI; installs only what is missing, so a machine that has it needs no root). The tests start their own registry
# on 127.0.0.1; the package's system service (which would listen on every interface) is stopped and disabled.
system-deps:
	@command -v docker-registry >/dev/null || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y docker-registry && \
	  { systemctl disable --now docker-registry 2>/dev/null || true; }; }

test: $(STAMP) system-deps arm-emulator-optional
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not slow and not gpu" -q

test-all: $(STAMP) system-deps arm-emulator-optional
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m toolchain.bench

# Every pattern of the coverage suite through every target; rewrites the table in README.md.
coverage: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(TOOLCHAIN) coverage -o $(BUILD)/coverage --readme README.md

clean:
	rm -rf $(BUILD) .toolchain-cache

# The side venv for the litert_torch stage (transformers on ARM: litert-torch + ai-edge-quantizer). litert-torch needs
# ai-edge-litert 2.3 and numpy 2, which the project venv cannot hold, so it lives apart and runs only as a child
# process. Same recipe as the main venv: torch first and pinned (CPU build), then the lock under the torch constraint.
LITERT_VENV := .venv-litert
LITERT_STAMP := $(LITERT_VENV)/.installed

.PHONY: venv-litert

venv-litert: $(LITERT_STAMP)

$(LITERT_STAMP): requirements-litert.lock constraints.txt
	test -x $(LITERT_VENV)/bin/python || $(PY) -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/pip install -q --upgrade pip setuptools
	$(LITERT_VENV)/bin/pip install -q torch==2.13.0
	$(LITERT_VENV)/bin/pip install -q -c constraints.txt -r requirements-litert.lock
	$(LITERT_VENV)/bin/pip check
	@if $(LITERT_VENV)/bin/pip list 2>/dev/null | grep -qi '^nvidia'; then echo "error: a CUDA torch build slipped in" >&2; exit 1; fi
	touch $@

# The MiniLM sample's arm64 target converts through litert-torch, which lives in the side venv.
$(BUILD)/minilm/report.json: $(LITERT_STAMP)

# The emulated aarch64 executor (arm64 validation on real ARM kernels, the ARM cost model): qemu-user, an arm64
# Debian rootfs, aarch64 LiteRT/numpy wheels at the lock's versions and the instruction-count plugin, under
# .arm-emulator/. Idempotent (each step is stamped). build/test call it but do not depend on it succeeding: without
# it arm64 is skipped (not judged on ARM kernels), with host LiteRT's figures as a check.
# `toolchain arm-emulator` runs the same script (shipped in the wheel, with the lock) for pip-installed users.
ARM_EMULATOR := .arm-emulator
ARM_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))

arm-emulator:
	bash toolchain/executors/setup_arm_emulator.sh $(ARM_EMULATOR) $(ARM_PY) requirements.lock

arm-emulator-optional:
	@$(MAKE) --no-print-directory arm-emulator || echo "warning: make arm-emulator failed: arm64 validation falls back to host LiteRT (reports say so)" >&2
