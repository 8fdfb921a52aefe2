# Set-up is idempotent: the venv is (re)built only when pyproject.toml or constraints.txt change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MEDIAPIPE := 0.10.21
LPIPS     := 0.1.4

.PHONY: venv test demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU torch build goes in first and is pinned by constraints.txt, so no dependency can pull a CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps mediapipe==$(MEDIAPIPE) lpips==$(LPIPS)
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

demo: venv
	bash scripts/demo.sh

clean:
	rm -rf $(VENV) build
