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
	$(VPY) scripts/setup_env.py
	touch $@

test: $(STAMP)
	$(VPY) -m pytest -q tests

demo: $(STAMP)
	$(VPY) scripts/demo.py --output-dir output/demo

# The GPU benchmarks' CPU smoke runs: tiny images and model, both pipelines, a few iterations.
bench-smoke: $(STAMP)
	$(VPY) bench/train_throughput.py --smoke
	$(VPY) bench/eval_inference.py --smoke

clean:
	rm -rf output build *.egg-info
