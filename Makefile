# make demo: create .venv, install lk_study, run the quickstart study on an embedded Ray
# make test: create .venv, install lk_study[dev], lint, run the whole test suite
# make gpu-check: on a GPU machine, benchmarks + a GPU study in at most 8 minutes
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test lint gpu-check
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/lk-study tune search_spaces/quickstart.yaml

lint: $(BIN)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

gpu-check: $(BIN)/.installed
	timeout 480 bash scripts/gpu_check.sh
