# Two commands set everything up from a fresh clone (Python 3.10+, no Redis, no root):
#   make run    evaluate the bundled planner agent on the bundled test set
#   make test   run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
AGENT  ?= $(BIN)/python -m agent_bridge.examples.shortest_path

.PHONY: run test test-containers bench install clean

$(BIN)/flateval: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	@# setuptools explains editable installs at length on every install: say nothing when all is well
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -qq -e '.[test]'
	@touch $@

install: $(BIN)/flateval

run: install
	$(BIN)/flateval run --agent "$(AGENT)" --output results.json

# The fault-injection suite kills and restarts processes; it runs in a pytest process of its own.
test: install
	$(BIN)/python -m pytest -q --ignore=tests/test_faults.py
	$(BIN)/python -m pytest -q tests/test_faults.py

# Only the tests that need a real container engine (docs/deploy.md): images, the compose cluster.
test-containers: install
	$(BIN)/python -m pytest -q -m container

bench: install
	$(BIN)/python benchmarks/episode_overhead.py

clean:
	rm -rf $(VENV) *.egg-info results.json
