# The two set-up commands of README.md. Both are idempotent: the install step runs again only when
# pyproject.toml changes (or the venv is missing), and apt is asked only for packages that are absent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.robrep-installed
CONFIG ?= jobs/configs/digits.yaml
PYTEST_ARGS ?=

.PHONY: demo test check install lint peer

demo: $(STAMP)
	$(PY) -m jobs.main --config $(CONFIG)

# Every lane: tests/unit, tests/integration (FFCV, a local Ray, entry points as processes, S3), tests/system (the
# trained pair, several nodes, ray job submit, kills and restarts).
# -X faulthandler: a crash, even one in the interpreter's exit after pytest's summary, prints every thread's stack.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -X faulthandler -m pytest $(PYTEST_ARGS)

# The fast lane while developing: the linter and tests/unit (no Ray, no FFCV, no subprocess; about 1.5 minutes).
check: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

# The robustness library (the peer of bench/gpu.py) and what it imports, as wheels for a GPU machine that has no
# package registry: carry bench/peer there with the checkout.
peer: $(STAMP)
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d bench/peer \
		robustness==1.2.1.post2 dill==0.4.1 tqdm==4.70.1
