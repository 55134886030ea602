# Entry points. `make lab` brings up the local lab fleet; `make test` runs every test.
# Both install what they need themselves (Debian packages, the venv, container images).
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
# Molecule scenarios run by `make test`, in this order (each builds the images it needs).
MOLECULE_SCENARIOS ?=

.PHONY: setup host venv test pytest molecule lint bench lab lab-down clean

setup: host venv

host:
	bash scripts/setup-host.sh

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt files/requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

test: setup lint pytest molecule

pytest: setup
	$(BIN)/pytest

molecule: setup
	@set -e; for scenario in $(MOLECULE_SCENARIOS); do \
	  echo "== molecule test -s $$scenario"; \
	  $(BIN)/molecule test -s $$scenario; \
	done

lint: venv
	$(BIN)/ruff check files tests bench scripts
	$(BIN)/ruff format --check files tests bench scripts
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production

bench: setup
	$(BIN)/python bench/agent_cost.py

clean:
	rm -rf $(VENV) .pytest_cache
