# Two commands on a fresh machine with Python 3.11:  make report   and   make test
# Both create .venv and install the project from its own files first (CPU build of torch, pinned).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= default
OUT ?= reports/$(PRESET)

.PHONY: install report test test-fast clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: any other torch request pulls a multi-GB CUDA build (constraints/cpu.txt)
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt torch
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

report: $(STAMP)
	$(BIN)/python -m verify all --preset $(PRESET) --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Maintainers: regenerate the committed default report and README's results block from it.
.PHONY: readme
readme: $(STAMP)
	$(BIN)/python -m verify all --preset default --out reports/default
	$(BIN)/python -m verify readme --out reports/default
