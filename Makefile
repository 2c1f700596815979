# The two set-up commands of README.md. Both are idempotent: the install step runs again only when
# pyproject.toml changes (or the venv is missing), and apt is asked only for packages that are absent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.robrep-installed
CONFIG ?= jobs/configs/digits.yaml
PYTEST_ARGS ?=

.PHONY: demo test install lint

demo: $(STAMP)
	$(PY) -m jobs.main --config $(CONFIG)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@
