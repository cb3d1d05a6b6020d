# `make test` and `make demo` work from nothing: they create .venv and install what is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.d2_finetune-installed

.PHONY: install test demo bench-smoke clean

install: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VPY) setup.py scripts/setup_env.py
	$(VPY) scripts/setup_env.py --extras test,export
	touch $@

# The tests run in two pytest processes: each test file in one of them (its module fixtures
# made once), with one torch thread each, so that they share the cores instead of fighting
# over them (on 2 cores: 6 to 8 minutes instead of 10 to 11).
test: $(STAMP)
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	OMP_NUM_THREADS=1 $(VPY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(VPY) scripts/demo.py --output-dir output/demo

# The GPU benchmarks' CPU smoke runs: tiny images and model, every pipeline, a few iterations.
bench-smoke: $(STAMP)
	SMOKE=1 PYTHON=$(VPY) WORK_DIR=output/bench_smoke_work bash bench/gpu_suite.sh output/bench_smoke

clean:
	rm -rf output build *.egg-info
