# The two set-up commands of README.md. Both are idempotent: the install step runs again only when
# pyproject.toml changes (or the venv is missing), and apt is asked only for packages that are absent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.robrep-installed
CONFIG ?= jobs/configs/digits.yaml
PYTEST_ARGS ?=

.PHONY: demo test install lint peer

demo: $(STAMP)
	$(PY) -m jobs.main --config $(CONFIG)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

# The robustness library (the peer of bench/gpu.py) and what it imports, as wheels for a GPU machine that has no
# package registry: carry bench/peer there with the checkout.
peer: $(STAMP)
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d bench/peer \
		robustness==1.2.1.post2 dill==0.4.1 tqdm==4.70.1
