# Two targets do all set-up on a fresh machine (see README):
#   make quickstart   install into .venv, build the tiny CPU models, recommend the paper's
#                     plan, then execute the tiny CPU plan end to end and query its history
#   make test         install into .venv (if needed) and run the test suite
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

.PHONY: install quickstart test test-cluster clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m runners.tiny tiny-models   # skips itself when built with the current recipe
	$(BIN)/s2d-plan recommend plans/budget.yaml
	$(BIN)/s2d-plan execute plans/tiny-cpu.yaml
	$(BIN)/s2d-plan history --table "SELECT stage_id, kind, status, round(gpu_hours * 3600, 1) AS seconds FROM stages WHERE run_id = (SELECT max(run_id) FROM runs) ORDER BY start_time"
	$(BIN)/s2d-plan history --table "SELECT stage_id, key, round(value, 3) AS value FROM metrics_latest WHERE key LIKE 'eval/%' OR key LIKE 'probe/%' ORDER BY time"

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cluster"

$(CLUSTER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,dev,cluster]'
	touch $(CLUSTER_STAMP)

# Slurm comes from the distribution (slurm-wlm, munge: needs root via apt-get); Ray from the `cluster` extra.
test-cluster: $(CLUSTER_STAMP)
	scripts/slurm-local.sh install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m cluster tests/test_cluster_ray.py tests/test_cluster_slurm.py

clean:
	rm -rf $(VENV) tiny-models .s2d
