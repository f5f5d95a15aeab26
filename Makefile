# Quick start on a fresh machine: `make demo` and `make test` each create .venv
# and install pinned CPU-friendly versions first. GPU users: `pip install -e .`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_ROOT ?= data
DEMO_OUT ?= output/demo
PYTEST_ARGS ?=

.PHONY: venv test demo clean-demo

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" "setuptools<81"
	$(PY) -m pip install --quiet -e ".[test,openclip]"
	touch $(STAMP)

# Two worker processes (pytest-xdist), each test file on one worker: the subprocess-heavy files
# (sweeps, torchrun) run beside the rest. TEST_WORKERS=auto uses every core; TEST_WORKERS=0 runs in one process.
# The suite starts about 40 Python processes: each reuses the compiled modules in __pycache__/ (ignored by
# git), also where PYTHONDONTWRITEBYTECODE is set in the environment.
TEST_WORKERS ?= 2
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m ampt.demo --root $(DATA_ROOT) --output-dir $(DEMO_OUT)

clean-demo:
	rm -rf $(DEMO_OUT)
