# Two commands do all the set-up on a fresh machine (Python 3.11, git):
#   make repro   creates .venv, installs the pinned dependencies, runs `dvc repro`
#   make test    creates .venv, installs the pinned dependencies and the Debian packages the
#                tests need (PostgreSQL, Chromium, the handwriting fonts: infra/local/apt-packages.txt), runs the tests
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# No usage telemetry from MLflow, DVC or anything honouring DO_NOT_TRACK.
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup system-deps repro exps test test-unit test-image image image-push bench clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

repro: setup
	dvc repro

# The experiments table with the headline figures only (dvc exp show has a column for every param and metric).
HEADLINE := ^accuracy_real$$|^accuracy_generated$$|^psnr_db$$|^class_consistency$$|^default_scheme_max_advantage_ci_low$$
exps: setup
	dvc exp show --no-pager --drop '.*' --keep 'Experiment|Created|$(HEADLINE)' $(EXPS_ARGS)

# The integration tests run real services: install Debian's packages when one is missing (root, or sudo).
system-deps:
	@missing=$$(for pkg in $$(grep -v '^#' infra/local/apt-packages.txt); do \
	    dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed' || echo $$pkg; done); \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	    sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    echo "installing Debian packages:" $$missing; \
	    $$sudo apt-get update -q && $$sudo apt-get install -y -q $$missing; \
	fi

# Two workers (pytest-xdist): the tiny pipelines' stage processes use about one core each, so the integration
# stack's tests run beside the e2e pipeline's; tests that share a session fixture stay in one worker
# (tests/conftest.py GROUPS). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: setup system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The component image built and run with rootful podman over a local Debian base (about 8 min).
test-image:
	bash ci/podman_image_check.sh

# The component image of this commit (docker/README.md): tagged and labelled with HEAD, which it also bakes in
# (every MLflow run and version made in it records that commit). A dirty tree is refused: its code is not HEAD's.
# image-push pushes it and writes the reference by digest to $(IMAGE_REF): `crypson pipeline submit --image "$$(cat image.ref)"`.
IMAGE_REPO ?= ghcr.io/crypson/crypson
CONTAINER ?= podman
COMMIT = $(shell git rev-parse HEAD)
image:
	@test -z "$$(git status --porcelain --untracked-files=no)" || { \
	    echo "make image: commit your changes first: the image is HEAD's code, tagged $(IMAGE_REPO):<commit>" >&2; exit 1; }
	$(CONTAINER) build -f docker/Dockerfile --build-arg GIT_COMMIT=$(COMMIT) $(IMAGE_ARGS) -t $(IMAGE_REPO):$(COMMIT) .

IMAGE_REF ?= image.ref
image-push: image
	$(CONTAINER) push --digestfile $(IMAGE_REF).digest $(IMAGE_REPO):$(COMMIT)
	echo "$(IMAGE_REPO):$(COMMIT)@$$(cat $(IMAGE_REF).digest)" > $(IMAGE_REF) && rm $(IMAGE_REF).digest
	@echo "pushed: $$(cat $(IMAGE_REF))"

test-unit: setup
	$(BIN)/python -m pytest tests/unit

bench: setup
	$(BIN)/python bench/train_throughput.py
