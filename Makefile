# Two commands for a fresh machine:
#   make train   set up .venv (core + every plugin in plugins/) and run a short training run
#   make test    set up .venv (plus the test plugin and pytest) and run the whole test suite
# Override the torch requirement for your platform, e.g. make train TORCH='torch==2.13.0+cu128'.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PLUGIN_DIRS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
TRAIN_ARGS ?= --model blagpt --set model.preset=blagpt+mini --set train.steps=150 --set train.eval_interval=50
PYTEST_ARGS ?= -n 2 --dist loadfile
WHEELHOUSE ?= .wheelhouse

.PHONY: setup setup-test wheelhouse train test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.setup: $(BIN)/python pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e . $(foreach p,$(PLUGIN_DIRS),-e $(p))
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup tests/plugins/tinylm/pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test]" -e tests/plugins/tinylm
	touch $@

setup: $(VENV)/.setup
setup-test: $(VENV)/.setup-test

# Wheels of torch and the core's other dependencies (and its test extra) for tests/test_wheels.py,
# which installs freshly built wheels into a new venv with --no-index: tests never use the network.
# Downloaded once (again when pyproject.toml changes).
$(WHEELHOUSE)/.complete: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip download -q -d $(WHEELHOUSE) "$(TORCH)" $$($(BIN)/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['test'])")
	touch $@

wheelhouse: $(WHEELHOUSE)/.complete

train: setup
	$(BIN)/blagpt train $(TRAIN_ARGS)
	$(BIN)/blagpt runs --limit 3

# Each test folder runs in its own pytest process: plugins are separate distributions whose test
# modules may share names (test_model.py), as they would in their own repositories. Two xdist
# workers on two cores: one thread each (oversubscribed threads make tiny models 10x slower).
test: setup-test wheelhouse
	@failed=""; for d in tests $(PLUGIN_DIRS:%=%tests); do \
	  echo "== $$d"; \
	  OMP_NUM_THREADS=1 BLAGPT_STRICT_PLUGINS=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS) $$d || failed="$$failed $$d"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED in:$$failed"; exit 1; fi

bench: setup
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(WHEELHOUSE) runs mlflow.db
