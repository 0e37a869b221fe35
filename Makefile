# Two entry points for a fresh Debian machine with Python 3.11:
#   make demo  - set everything up and walk through a backup and a restore
#   make test  - set everything up (Debian packages too) and run the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests use: FUSE, file systems, partitioning, qcow2 tools, PostgreSQL, node for Azurite.
DEB_PACKAGES := fuse3 libfuse3-dev pkg-config btrfs-progs xfsprogs e2fsprogs fdisk qemu-utils \
	acl attr postgresql util-linux
BENCH_DEB_PACKAGES := restic borgbackup hyperfine
# make bench BENCH_ARGS="--quick --runs 1" for a fast check; see benchmarks/run.py --help.
BENCH_ARGS ?= --profile

.PHONY: demo test lint typecheck unit bench deps venv clean

$(STAMP): pyproject.toml
	@# Debian's own python3 needs python3-venv for this; install it when we can (root).
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The mount extra compiles against libfuse3 (installed by `deps`), so only `make test` needs it.
MOUNT_STAMP := $(VENV)/.installed-mount
$(MOUNT_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,mount]'
	touch $(MOUNT_STAMP)

venv: $(STAMP)

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi
	@scripts/install-azurite.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: deps $(STAMP) $(MOUNT_STAMP) lint typecheck unit

demo: $(STAMP)
	$(PY) -m kluis.demo

bench: deps $(STAMP)
	@missing=""; for p in $(BENCH_DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi
	test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q py-spy
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache
