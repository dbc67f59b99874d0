# One-line targets; everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q --upgrade pip && $(BIN)/python -m pip install -q -e '.[test]' && touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check emcli tests benchmarks && $(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_em.py

demo: install
	$(BIN)/python -c "import numpy as np, pandas as pd; from emcli import GaussianMixture; X = pd.read_csv('sample_data/airquality.csv').to_numpy(float); gm = GaussianMixture(3, n_init=3, random_state=0).fit(X); print('weights', gm.weights_.round(3)); print('means', gm.means_.round(2)); print('converged', gm.converged_, 'iterations', gm.n_iter_)"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
