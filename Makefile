# `make demo` and `make test` each set everything up on a fresh clone: a .venv, the package, a run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-xdist workers (CI's machine has 2 cores); a test file stays on one worker, so its
# module fixtures (a trained probe, a compiled step) are built once.
TEST_WORKERS ?= 2

.PHONY: demo test install clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]' -c constraints.txt
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m nwt_jax.demo --workdir=runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
