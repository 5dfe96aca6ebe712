# fgrad — one entry point for installing, testing and reproducing.
#   make reproduce [PRESET=cpu|full|paper] [FORCE=1]  run the experiments, then figures + report
#   make beyond [PRESET=cpu|paper]                 only the beyond-paper experiments
#   make test                                     the test suite
# The first target that needs Python creates .venv and installs the package into it.

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
PRESET     ?= cpu
FORCE      ?= 0
OUT        ?= results/$(PRESET)
# Offline MNIST: the four IDX files. Unset → TFDS downloads MNIST.
FGRAD_MNIST_DIR ?= $(wildcard ../shared/data/mnist)
export FGRAD_MNIST_DIR

.PHONY: install test reproduce beyond figures bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# two workers, one test file each at a time (module fixtures run once): compilation and
# Python start-up are single-threaded, so the suite takes ~3/4 of its serial time on 2 cores
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10 tests

reproduce: install
	$(PY) -m fgrad reproduce --preset $(PRESET) --out $(OUT) $(if $(filter 1,$(FORCE)),--force,)

beyond: install
	$(PY) -m fgrad reproduce --groups beyond --preset $(PRESET) --out $(OUT) $(if $(filter 1,$(FORCE)),--force,)

figures: install
	$(PY) -m fgrad reproduce --preset $(PRESET) --out $(OUT) --figures-only
	$(PY) -m fgrad.analysis.readme   # the README's results block, from results/

bench: install
	$(PY) experiments/bench.py $(BENCH_ARGS)

lint: install
	$(PY) -m ruff check fgrad experiments tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
