# pgjit developer entry points. `make test` and `make dev` set up everything they need on a
# fresh machine: the virtualenv, PostgreSQL 15/16/18, the de_DE locale, and kube-apiserver, etcd,
# kubectl and helm built from their Go modules into .cache/bin.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
LOGS := .cache/test-logs

.PHONY: test test-unit test-postgres test-cluster venv system-packages kube-binaries crds \
        dev bench bench-engine clean lua-runner helm-lint

test: venv
	@mkdir -p $(LOGS)
	@# Independent layers run in parallel; -Otarget keeps each layer's output together.
	$(MAKE) --no-print-directory -j3 -Otarget test-unit test-postgres test-cluster

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

system-packages:
	bash tests/setup/system-packages.sh

kube-binaries: venv
	$(PY) -m pgjit.devstack.kube_binaries

# The gopher-lua + kstatus runner the GitOps health tests judge objects with (tests/argocd-health).
lua-runner: venv
	$(PY) -m pgjit.devstack.lua_runner

crds: venv
	$(VENV)/bin/pgjit crds --output-dir crds
	$(VENV)/bin/pgjit crds --output-dir charts/pgjit/files/crds

test-unit: venv
	$(PYTEST) tests/unit -q -p no:cacheprovider

test-postgres: venv system-packages
	$(PYTEST) tests/postgres -q -p no:cacheprovider

test-cluster: venv system-packages kube-binaries lua-runner
	$(PYTEST) tests/cluster -q -p no:cacheprovider

dev: venv system-packages kube-binaries
	$(VENV)/bin/pgjit dev

bench: venv system-packages kube-binaries
	$(PY) tests/bench/bench_operator.py

# The chart as CI checks it: strict lint in both RBAC modes (the tests also install it for real).
helm-lint: kube-binaries
	@helm=$$(ls .cache/bin/helm-* | tail -1); \
	$$helm lint --strict charts/pgjit && \
	$$helm lint --strict charts/pgjit --set 'watchNamespaces={team-a,team-b}'

bench-engine: venv system-packages
	$(PY) tests/bench/bench_engine.py

clean:
	rm -rf $(VENV) .cache/test-logs .pytest_cache
