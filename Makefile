# make demo — create .venv if missing, install, run the main job (d2nn-lab demo)
# make test — create .venv if missing, install with test extras, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.d2nn-lab-installed

.PHONY: demo test install clean

install: $(STAMP)

# torch first, pinned: the CPU wheel lies on disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/d2nn-lab demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs build *.egg-info
