# Every target sets itself up: it creates .venv and installs the project
# (non-editable, with the server, dev, grafana and bench extras) when the sources changed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SOURCES = pyproject.toml $(shell find collector shipper web dashboards -type f 2>/dev/null)

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python $(SOURCES)
	rm -rf build
	URLLIB3_NO_OVERRIDE=1 $(BIN)/python -m pip install -q --no-binary urllib3-future '.[server,dev,grafana,bench]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/upmetr-audit serve --demo

test: $(VENV)/.installed
	$(BIN)/ruff check collector shipper web dashboards tests bench
	$(BIN)/pytest -n auto

# make bench ARGS="--only P2 --size 10M"; see docs/benchmarks.md
bench: $(VENV)/.installed
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
