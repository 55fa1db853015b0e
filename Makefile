# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: venv install install-test demo test clean espeak-ng benchmark-missing benchmark-memory

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, on its own: where a local wheel cache serves it (as on our CI machines)
# this takes it from disk instead of resolving it together with everything else.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install "torch>=2.4" "torchvision>=0.19"
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/crossfuse demo --out runs/demo

test: install-test
	$(PY) -m pytest -q

# espeak-ng synthesises the spoken digits of AV-digits; Debian package, needs root (as in CI)
espeak-ng:
	@command -v espeak-ng >/dev/null || (apt-get update -q && apt-get install -y -q espeak-ng)

benchmark-missing: install espeak-ng
	$(PY) benchmarks/missing_modalities.py

benchmark-memory: install
	$(PY) benchmarks/streaming_memory.py

clean:
	rm -rf $(VENV) runs data/demo
