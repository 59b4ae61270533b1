# Set-up and the two entry points of the README. Every target creates .venv/ when it is missing.
# torch is installed alone and pinned first: a plain `torch` requirement pulls a multi-GB CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PIP := $(VENV)/bin/pip
TORCH := torch==2.13.0
EXTRAS := dev,ann,scann,eval,dist,serve,ocr

.PHONY: demo test lint bench-embed clean-demo

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.core-installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install "$(TORCH)"
	$(PIP) install "$(TORCH)" -e . scikit-image
	touch $@

$(VENV)/.dev-installed: $(VENV)/.core-installed pyproject.toml
	$(PIP) install "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.core-installed
	$(VENV)/bin/python -m img_search.demo

test: $(VENV)/.dev-installed
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check img_search tests bench scripts
	$(VENV)/bin/mypy img_search

bench-embed: $(VENV)/.dev-installed
	$(VENV)/bin/python bench/embed_throughput.py

clean-demo:
	rm -rf .demo
