# Each target sets itself up on a fresh machine: a virtual environment in
# .venv with the package and its test extras, then the job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-slow lint bench experiments clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

quickstart: $(STAMP)  ## the main job: configs/quickstart.yaml on the built-in text
	$(BIN)/collapse-sim run configs/quickstart.yaml

test: $(STAMP)  ## the linter and the default test suite, on two workers (CI runs this)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)  ## the long statistical checks
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m slow

lint: $(STAMP)  ## ruff (configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)  ## n-gram throughput against a numpy loop, checkpoint overhead, transformers against PyTorch (if installed); records to benchmarks/RESULTS.md
	$(BIN)/python benchmarks/ngram_throughput.py
	$(BIN)/python benchmarks/checkpoint_overhead.py
	$(BIN)/python benchmarks/transformer_throughput.py

experiments: $(STAMP)  ## the five experiments of docs/experiments.md (about 10 min on 2 cores); figures to docs/figures/
	configs/experiments/run.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
