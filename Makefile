# Two targets do all set-up on a fresh machine (see README):
#   make quickstart   install into .venv, then on tinyworld's shipped pretrained models:
#                     recommend, execute, print the student before/after, write the report
#   make test         install into .venv (if needed), chromium (if missing), ruff, the tests, the docs (strict),
#                     build the docs (--strict, into a temporary directory)
#   make test-cluster install Ray and Slurm, then run the tests that start a real two-node
#                     Ray cluster and a single-host Slurm cluster (scripts/slurm-local.sh)
# torch is installed first and pinned: a bare `torch` pulled in by another package
# resolves to a multi-GB CUDA build on a CPU machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.s2d-installed
CLUSTER_STAMP := $(VENV)/.s2d-cluster-installed
TORCH  := torch==2.13.0
export S2D_HOME ?= .s2d

.PHONY: install quickstart test test-cluster browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m tinyworld.quickstart

# The report tests open pages in a real headless browser (Debian's chromium; kaleido's
# PNG export drives the same one). CI runs as root; elsewhere sudo is asked for.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (the report tests render pages in it)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	S2D_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -m "not cluster"
	$(BIN)/python -m mkdocs build --strict --site-dir "$$(mktemp -d)"

$(CLUSTER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,dev,cluster]'
	touch $(CLUSTER_STAMP)

# Slurm comes from the distribution (slurm-wlm, munge: needs root via apt-get); Ray from the `cluster` extra.
test-cluster: $(CLUSTER_STAMP)
	scripts/slurm-local.sh install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m cluster tests/test_cluster_ray.py tests/test_cluster_slurm.py

clean:
	rm -rf $(VENV) tiny-models .s2d
