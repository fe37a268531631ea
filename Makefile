# The two commands: `make demo` and `make test`. Both set up everything they need on a fresh machine:
# system packages (scripts/install-system-deps.sh), a virtualenv with the operator and the repository's dev
# tooling (devtools/: `modelrollout dev|sim|demo`, the test tools), and the Go-built etcd / kube-apiserver /
# kubectl and GitOps readers (kstatus, Argo CD's Lua runtime), and for `make test` Flux's source-controller and
# kustomize-controller, cached in ~/.cache/modelrollout, built once.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: bench bench-decisions bench-scale bench-promote help deps venv binaries crds lint test test-unit test-integration demo dev dev-up dev-down dev-env clean

help:
	@echo "make demo              two rollouts on simulated traffic: one promotes, one rolls back (~2 min)"
	@echo "make dev               the local environment with the CRD and samples applied (Ctrl-C tears down)"
	@echo "make test              lint, type-check, import contracts, all test tiers"
	@echo "make crds              regenerate crds/ from operator/modelrollout/api.py"
	@echo "make test-unit         the pure unit tier only (no servers)"
	@echo "make test-integration  the tiers that run against the real control plane and Prometheus"
	@echo "make test-gitops       Flux's controllers, kstatus and Argo CD's Lua runtime on live rollouts"
	@echo "make dev-up|dev-env|dev-down  a detached local environment for your shell"
	@echo "make bench-decisions   simulated rollouts: threshold vs Mann-Whitney vs sequential gates (no servers)"
	@echo "make bench-scale       fleets of 100, 1,000 and 5,000 healthy rollouts on one operator (SIZES=...)"
	@echo "make bench-promote     N rollouts promoted at once, then the kill switch (N=40)"

deps:
	@bash scripts/install-system-deps.sh

$(BIN)/.installed: pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . -e './devtools[test]'
	@touch $@

venv: $(BIN)/.installed

binaries: deps venv
	$(BIN)/modelrollout dev build

crds: venv
	$(BIN)/modelrollout crds --output-dir crds

lint: venv
	$(BIN)/modelrollout crds --output-dir crds --check
	$(BIN)/ruff check operator devtools tests bench
	$(BIN)/ruff format --check operator devtools tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# The gitops tier and then the unit tier run in a second line of pytest sessions beside the rest (the gitops
# tier with its own control plane and Prometheus; the unit tier needs none); their output follows the other
# tiers'. Any of them failing fails the target.
ALONGSIDE_LOG = $(or $(TMPDIR),/tmp)/modelrollout-alongside-tiers.log
test: binaries flux helm lint
	@( $(BIN)/pytest tests/gitops $(PYTEST_ARGS); gitops=$$?; \
	   $(BIN)/pytest tests/unit $(PYTEST_ARGS); unit=$$?; \
	   echo "gitops tier: exit $$gitops; unit tier: exit $$unit"; \
	   test $$gitops -eq 0 && test $$unit -eq 0 ) > $(ALONGSIDE_LOG) 2>&1 & alongside=$$!; \
	$(BIN)/pytest tests --ignore=tests/gitops --ignore=tests/unit $(PYTEST_ARGS); tiers=$$?; \
	wait $$alongside; alongside_tiers=$$?; \
	echo "==================== gitops and unit tiers (run alongside) ===================="; \
	cat $(ALONGSIDE_LOG); \
	echo "chaos and integration tiers: exit $$tiers; gitops and unit tiers: exit $$alongside_tiers"; \
	test $$tiers -eq 0 && test $$alongside_tiers -eq 0

test-unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: binaries helm
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

demo: binaries
	$(BIN)/modelrollout demo

SAMPLES := manifests/samples
dev: binaries
	@echo "# The sample rollout is applied; in another shell: eval \"\$$($(BIN)/modelrollout dev env)\"; kubectl get mro -A"
	$(BIN)/modelrollout dev up --foreground --apply crds \
		--apply $(SAMPLES)/services.yaml --apply $(SAMPLES)/virtualservice.yaml --apply $(SAMPLES)/modelrollout.yaml

dev-up: binaries
	$(BIN)/modelrollout dev up

dev-env: venv
	@$(BIN)/modelrollout dev env

dev-down: venv
	$(BIN)/modelrollout dev down

# Benchmarks print figures; they pass or fail nothing.
N ?= 40
bench: venv
	$(BIN)/python bench/core.py

bench-decisions: venv
	$(BIN)/python bench/decisions.py

SIZES ?= 100 1000 5000
# The operators under measure run from a virtualenv with the operator's runtime dependencies only, installed
# as the image installs them (not editable): the dev tooling's (the kubernetes package, which kopf imports
# whenever it is installed, pytest, rich...) would add to the memory measured.
OPERATOR_VENV ?= .venv-operator
$(OPERATOR_VENV)/.installed: pyproject.toml $(shell find operator -name '*.py')
	$(PYTHON) -m venv $(OPERATOR_VENV)
	$(OPERATOR_VENV)/bin/pip install --quiet --upgrade pip
	$(OPERATOR_VENV)/bin/pip install --quiet --force-reinstall --no-deps . && $(OPERATOR_VENV)/bin/pip install --quiet .
	touch $@

bench-scale: binaries $(OPERATOR_VENV)/.installed
	$(BIN)/python bench/scale.py --sizes $(SIZES) --operator-python $(OPERATOR_VENV)/bin/python

bench-promote: binaries
	$(BIN)/python bench/promote.py --rollouts $(N)

# Areas keep their own targets in mk/*.mk (deployment, simulator, ...).
-include mk/*.mk

clean:
	rm -rf $(VENV) $(OPERATOR_VENV) .mypy_cache .pytest_cache .ruff_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
