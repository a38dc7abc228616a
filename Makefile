# Two commands a fresh machine needs: `make demo` and `make test` (each installs what it needs first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
# The real control plane (controlplane/): built from source once per version, into a cache outside git.
# The key covers the pinned versions (go.mod/go.sum) and the build script, so a change rebuilds and a rerun is instant.
KUBE_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" {print $$2}' controlplane/go.mod)
CONTROLPLANE_KEY := $(shell cat controlplane/go.mod controlplane/go.sum controlplane/etcd/go.mod controlplane/etcd/go.sum controlplane/build.sh | cksum | cut -d' ' -f1)
CONTROLPLANE_DIR := .cache/controlplane/$(KUBE_VERSION)-$(CONTROLPLANE_KEY)
CONTROLPLANE_STAMP := $(CONTROLPLANE_DIR)/bin/.built

.PHONY: install controlplane browser demo ui test bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

$(CONTROLPLANE_STAMP):
	controlplane/build.sh $(CONTROLPLANE_DIR)/bin
	touch $@

# kubesim.controlplane finds the binaries through the link .cache/controlplane/current.
controlplane: $(CONTROLPLANE_STAMP)
	ln -sfn $(KUBE_VERSION)-$(CONTROLPLANE_KEY) .cache/controlplane/current

install: $(STAMP)

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`, which downloads one).
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# make demo needs no control plane (kubesim serves it); the tests and benchmarks do.
DEMO_ARGS ?=
demo: install
	$(BIN)/python -m scripts.demo $(DEMO_ARGS)

test: install controlplane browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

UI_ARGS ?=
ui: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m scripts.ui $(UI_ARGS)

BENCH ?=
bench: install controlplane
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache build reports
