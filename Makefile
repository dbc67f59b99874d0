# One-line targets; everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q --upgrade pip && $(BIN)/python -m pip install -q -e '.[test]' && touch $@

test: lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check emcli tests benchmarks && $(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_em.py && $(BIN)/python benchmarks/bench_sweep.py && $(BIN)/python benchmarks/bench_missing.py && $(BIN)/python benchmarks/bench_dask.py

demo: install
	$(BIN)/emcli fit sample_data/airquality.csv -k 3 --n-init 3 -o demo-out && head -5 demo-out/airquality.labels.csv && tail -3 demo-out/airquality.convergence.csv

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find emcli -name '*.nbi' -delete -o -name '*.nbc' -delete
