# pgjit developer entry points. `make test` and `make dev` set up everything they need on a
# fresh machine: the virtualenv, PostgreSQL 15/16/18, the de_DE locale, and kube-apiserver, etcd,
# kubectl and helm built from their Go modules into .cache/bin.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
VENV_STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/test.txt | sha256sum | cut -c1-12)
# uv resolves the lock files (`make lock`); pinned so two people locking get the same output.
UV_VERSION := 0.13.9
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet
LOGS := .cache/test-logs

.PHONY: test check test-unit test-postgres test-cluster test-node test-faults node-images node-packages lock venv system-packages kube-binaries crds \
        dev bench bench-failover bench-shards bench-soak bench-profile bench-engine bench-engine-scale clean lua-runner helm-lint

test: venv
	@mkdir -p $(LOGS)
	@# Independent layers run in parallel; -Otarget keeps each layer's output together.
	$(MAKE) --no-print-directory -j3 -Otarget check test-unit test-postgres test-cluster test-node \
	    test-faults

# Types (strict for api/ and core/, see pyproject.toml) and the layer contracts of the README's
# Layout. Both run even when the first fails, so one run shows every problem.
check: venv
	@status=0; \
	$(VENV)/bin/mypy || status=1; \
	$(VENV)/bin/lint-imports --no-cache || status=1; \
	exit $$status

venv: $(VENV_STAMP)

# The test virtualenv gets exactly the hash-pinned versions of requirements/test.txt; the
# operator image installs requirements/runtime.txt, whose versions test.txt repeats (it is
# resolved with runtime.txt as a constraint), so the image runs what the tests ran.
$(VENV_STAMP): pyproject.toml requirements/test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# Re-resolve both lock files from pyproject.toml (after changing a dependency, or to update).
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements/runtime.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra test -c requirements/runtime.txt \
	    $(LOCK_FLAGS) -o requirements/test.txt

system-packages:
	bash tests/setup/system-packages.sh

kube-binaries: venv
	$(PY) -m pgjit.devstack.kube_binaries

# containerd, runc, podman and mmdebstrap for the node layer (tests/setup/node-packages.sh).
# After system-packages: two apt-get runs at once would fight over dpkg's lock.
node-packages: system-packages
	bash tests/setup/node-packages.sh

# The operator image from the Dockerfile, the base it builds on and the pause image.
node-images: venv node-packages
	$(PY) -m pgjit.devstack.node_image

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

# Several operators against a control plane and PostgreSQL of each test's own, which the tests
# restart, stop and cut off mid-burst: leader election, sharding, the fault suite.
test-faults: venv system-packages kube-binaries
	$(PYTEST) tests/faults -q -p no:cacheprovider

# The chart's Deployment on a real kubelet (containerd + runc), the image built from the
# Dockerfile. The images (mostly downloads: mmdebstrap, pip) build while Go compiles; the node
# binaries build after the control plane's (one build lock).
test-node: venv system-packages node-packages node-images kube-binaries
	$(PY) -m pgjit.devstack.kube_binaries --node >/dev/null
	$(PYTEST) tests/node -q -p no:cacheprovider

dev: venv system-packages kube-binaries
	$(VENV)/bin/pgjit dev

# BENCH_ARGS passes options through, e.g. make bench BENCH_ARGS="--sizes 100,500,10000".
bench: venv system-packages kube-binaries
	$(PY) tests/bench/bench_operator.py $(BENCH_ARGS)
	$(PY) tests/bench/bench_failover.py

# One instance against two sharded ones splitting the Databases: is throughput additive?
bench-shards: venv system-packages kube-binaries
	$(PY) tests/bench/bench_shards.py $(BENCH_ARGS)

# 10,000 sessions in waves for 20 minutes: RSS and admin connections over time, plotted into
# docs/soak.png (not part of make test: it takes the machine for 20 minutes).
bench-soak: venv system-packages kube-binaries
	$(PY) tests/bench/bench_soak.py $(BENCH_ARGS)

# Failover time from a leader killed to the first session the new leader opens (10 kills).
bench-failover: venv system-packages kube-binaries
	$(PY) tests/bench/bench_failover.py $(BENCH_ARGS)

# A py-spy profile of one 500-session burst and a tracemalloc diff at 500 live sessions.
bench-profile: venv system-packages kube-binaries
	$(PY) tests/bench/bench_operator.py --sizes 500 --profile $(BENCH_ARGS)

# The chart as CI checks it: strict lint in both RBAC modes (the tests also install it for real).
helm-lint: kube-binaries
	@helm=$$(ls .cache/bin/helm-* | tail -1); \
	$$helm lint --strict charts/pgjit && \
	$$helm lint --strict charts/pgjit --set 'watchNamespaces={team-a,team-b}'

bench-engine: venv system-packages
	$(PY) tests/bench/bench_engine.py

# Activations and ends per second with 500 and 5,000 users existing at once, per major.
bench-engine-scale: venv system-packages
	$(PY) tests/bench/bench_engine_scale.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache/test-logs .pytest_cache
