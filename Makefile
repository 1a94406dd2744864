# `make demo` and `make test` each set everything up on a fresh clone: a .venv, the package, a run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
# pytest-xdist workers (CI's machine has 2 cores); a test file stays on one worker, so its
# module fixtures (a trained probe, a compiled step) are built once.
TEST_WORKERS ?= 2

.PHONY: demo test install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The runtime alone (what `make demo` needs): no pytest, Beam or torch.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt | $(PY)
	$(PIP) -e .
	touch $@

# The tests' extras (pytest, librosa, Beam, the torch peer) on top, and a headless Chromium.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev,bench]'
	tools/install_chromium.sh
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(PY) -m nwt_jax.demo --workdir=runs/demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
