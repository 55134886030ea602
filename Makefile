# Entry points. `make lab` brings up the local lab fleet; `make test` runs every test.
# Both install what they need themselves (Debian packages, the venv, container images).
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
# Molecule scenarios run by `make test`, in this order (each builds the images it needs).
MOLECULE_SCENARIOS ?= devices wheelhouse server default pull
# Container base images (scripts/images.sh NAME...), rebuilt only when their recipe changes.
IMAGES := device-debian12 device-debian13 server-debian12

.PHONY: setup host venv test pytest molecule lint bench bench-ingest bench-rollout images lab lab-down clean server-config

setup: host venv

# Installs and configures the host's packages and podman, then reports each capability the project
# needs (scripts/setup-host.sh --check alone only reports).
host:
	bash scripts/setup-host.sh

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt files/requirements.txt
	@echo "venv: installing the controller tools from requirements.txt into $(VENV) (a minute or two)"
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
	  bash scripts/molecule-scenario.sh $$scenario; \
	done

lint: venv
	$(BIN)/ruff check files tests bench scripts molecule testkit roles
	$(BIN)/ruff format --check files tests bench scripts molecule testkit roles
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production

images: host
	bash scripts/images.sh $(IMAGES)

# The local lab: a monitoring server and three devices (critical / regular / dev) in systemd
# containers, rolled out with site.yml, then the device table as Prometheus sees it. Safe to rerun.
lab: setup
	bash scripts/lab.sh up

lab-down:
	bash scripts/lab.sh down

# Benchmarks (docs/benchmarks.md): the agent's cost, one server's ingest, rollout speed.
bench: setup
	$(BIN)/python bench/agent_cost.py

bench-ingest: setup
	$(BIN)/python bench/ingest.py

bench-rollout: setup
	$(BIN)/python bench/rollout.py

# Renders server/compose/ (mounted by docker-compose.yml) from the roles' templates and defaults.
server-config: venv
	$(BIN)/ansible-playbook playbooks/render-server-config.yml

clean:
	rm -rf $(VENV) .pytest_cache
