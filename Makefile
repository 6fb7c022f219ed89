# Two set-up commands (README): `make demo` and `make test`. Both install what they need:
# Debian packages (as root or with sudo) and a virtualenv in .venv.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# fuse3/libfuse3-dev/pkg-config build and run pyfuse3; the rest are the tools the tests drive.
APT_PKGS := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv rsync git vim-nox sqlite3 util-linux syncthing
BENCH_PKGS := gocryptfs cryfs fio

.PHONY: deps venv demo test test-all bench clean

deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(PY)

venv: deps $(PY)

demo: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" ./scripts/demo.sh

test: venv
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q

bench: venv
	@missing=$$(for p in $(BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; }
	$(PY) benchmarks/fs_bench.py

clean:
	rm -rf $(VENV) demo .pytest_cache .hypothesis
