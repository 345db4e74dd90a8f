"""One frozen dataclass per stage, with a docstring per field (the CLI's help text) and validation in
`__post_init__`. The CLI derives each command's options from these fields (`cli.options`), so a default
lives in exactly one place and a Python caller gets what the CLI gets."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
from dataclasses import dataclass

from nar.errors import NarError

PRECISIONS = ("auto", "bf16", "fp32")
"""Autocast of the frozen LLM's passes; 'auto' is resolved by `nar.llm.FrozenLLM.precision`."""

STUDY_TAG = "encoder-study-2026-12"
"""The git tag of the code in which every encoder lever of docs/ENCODER.md runs, including the ones that measured no
gain and were removed from the core after it."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise NarError(msg)


class StageConfig:
    """What every stage's config can do: dict/JSON round trips (unknown keys of newer or older versions are
    ignored; fields a saved config predates take `LEGACY` values), copies with changes, field docs."""

    LEGACY: dict = {}
    """Values of fields that a config saved before they existed was run with."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**cls.LEGACY, **{k: v for k, v in d.items() if k in names}})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: its docstring} of a config dataclass, read from its source (the string after each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


@dataclass(frozen=True)
class FitConfig(StageConfig):
    """How proto-tokens are fitted to target texts (Paper A's recipe plus the options we measured)."""

    max_steps: int = 500
    """Optimiser steps per text before giving up (the best vectors seen are kept)."""
    target_acc: float = 1.0
    """Token accuracy at which a text stops early (1.0 = argmax reproduces every token)."""
    init: str = "tokens"
    """'embed_std' (Paper A): randn scaled by the std of the LLM's embedding matrix; 'randn': plain N(0, 1);
    'tokens': e and m start at the mean of the target's own token embeddings plus 'embed_std' noise;
    'teacher' (build-corpus): e starts at a fixed projection of the text's teacher embedding, scaled to
    a token's norm, m as 'embed_std'. The projection is one frame for the whole corpus."""
    init_noise: str = "text"
    """Whose noise a start gets: 'text' (seeded by the text: two texts start at unrelated points, and so do their
    solutions, paraphrases included) or 'shared' (one noise vector for every text: with init 'tokens' the start
    is a smooth function of the text, and fitted solutions of paraphrases come out closer:
    docs/ENCODER.md, "Diagnosis"; a candidate regression target for `train-encoder CORPUS`)."""
    lr: float = 3e-2
    """AdamW (peak) learning rate (Paper A: 1e-2 constant; measured faster here: 3e-2 with the cosine schedule)."""
    lr_schedule: str = "cosine"
    """'constant' (Paper A) or 'cosine': per text, linear warm-up over warmup_steps, then cosine decay
    from lr to lr/10 at max_steps (each slot follows its own text's step count)."""
    warmup_steps: int = 10
    """Linear warm-up steps of the 'cosine' schedule."""
    beta1: float = 0.9
    """AdamW beta1 (Paper A: 0.9)."""
    beta2: float = 0.9
    """AdamW beta2 (Paper A: 0.9, not the usual 0.999)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on e and m (Paper A: 0.01)."""
    prefix: str = "bos"
    """Fixed, untrained tokens before e: 'bos' (the tokenizer's BOS), 'none', or literal text."""
    first: str = "e"
    """Which position predicts the first target token: 'e' (its own output) or 'm' (the first m)."""
    precision: str = "auto"
    """'bf16': bfloat16 autocast for the LLM's matmuls (proto-tokens stay fp32); 'fp32': none; 'auto': bf16
    where the device computes it natively (a GPU, an AVX-512 CPU), else fp32 (emulated bf16 is 6-70x slower)."""
    verify_fp32: bool = True
    """With bf16: a text counts as reaching target_acc only when its vectors also do in an fp32 pass (the
    default decoding); until then it keeps training (a bf16 fit alone failed in fp32 for 2 of 7 texts)."""
    train_e: bool = True
    """False: e stays where it starts (e.g. in the teacher frame, pinned by build-corpus's frame_pin) and only m is
    fitted: e is then exactly the frame's vector, m carries the whole reconstruction."""
    margin: float = 0.0
    """> 0: a token counts as reproduced only when its logit beats the runner-up by this much (in the fp32 check
    under bf16, else in the fit's own pass), so the text also decodes exactly under other arithmetic (bf16 at
    another batch shape flipped 4 of 33 margin-0 fits); 0: the plain argmax."""
    num_slots: int = 8
    """Texts fitted at once as one padded batch; a finished slot is refilled with the next text."""
    sort_by_length: bool = False
    """Feed texts to the slots longest first, so co-resident texts have similar lengths (less padding per
    step) and the slowest texts start early. Off by default: shortest-first saved 7% per step but lost 20%
    wall time on 16 mixed texts (the run's tail); results do not depend on the order."""
    max_tokens: int = 64
    """Longest target, in tokens, that is accepted."""
    append_eos: bool = False
    """Append the tokenizer's EOS to each target, so decoding can find where the text ends."""
    seed: int = 0
    """Seed of the initial vectors; each text's init depends only on (seed, text key)."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "max_steps must be >= 1")
        _check(0.0 < self.target_acc <= 1.0, "target_acc must be in (0, 1]")
        _check(self.lr > 0, "lr must be > 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(self.init_noise in ("text", "shared"), "init_noise must be 'text' or 'shared'")
        _check(self.init in ("embed_std", "randn", "tokens", "teacher"),
               "init must be 'embed_std', 'randn', 'tokens' or 'teacher'")
        _check(self.lr_schedule in ("constant", "cosine"), "lr_schedule must be 'constant' or 'cosine'")
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(self.first in ("e", "m"), "first must be 'e' or 'm'")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}")
        _check(self.num_slots >= 1, "num_slots must be >= 1")
        _check(self.margin >= 0, "margin must be >= 0")
        _check(self.max_tokens >= 1, "max_tokens must be >= 1")


# nar 0.1.0 manifests predate the schedule, earlier ones the fp32 check
FitConfig.LEGACY = {"lr_schedule": "constant", "warmup_steps": 0, "verify_fp32": False, "margin": 0.0,
                    "train_e": True}

CORPUS_FIT = FitConfig(init="teacher", max_tokens=32)
"""The fit defaults of `build-corpus` (`nar.build.build_corpus`): e starts in the corpus's teacher frame, and
targets are short (longer ones are skipped or truncated, BuildConfig.on_long)."""


@dataclass(frozen=True)
class BuildConfig(StageConfig):
    """How `nar build-corpus` reads its input and regularises the fit (fit options are in FitConfig)."""

    input: str
    """A .jsonl/.json/.csv/.tsv/.parquet/.txt file, a folder saved by `datasets`, or a hub dataset name."""
    out: str
    """Corpus folder (created, or resumed when it already holds a corpus)."""
    text_column: str | None = None
    """Column of texts to autoencode (target = source). Default: 'text' unless source/target are given."""
    source_column: str | None = None
    """Column of sources for seq2seq pairs (stored for the encoder)."""
    target_column: str | None = None
    """Column of targets for seq2seq pairs (the proto-tokens are fitted to these)."""
    id_column: str | None = None
    """Column of unique ids; default 'id' if present, else a hash of (source, target)."""
    split: str = "train"
    """Split to read from a saved DatasetDict or a hub dataset."""
    limit: int | None = None
    """Use only the first N rows of the input."""
    on_long: str = "skip"
    """Targets over max_tokens: 'skip' them or 'truncate' them to max_tokens (both counted)."""
    model: str = "smollm2-135m-instruct"
    """Frozen LLM (see `nar reconstruct --help`)."""
    teacher: str = "all-MiniLM-L6-v2"
    """Sentence-transformers teacher: the embedded default, a name, or a local path."""
    rd_weight: float = 1.0
    """Weight of relational distillation (0 disables)."""
    rd_target: str = "e"
    """Which proto-token the relations are imposed on: 'e', 'm' or 'em' (both, concatenated)."""
    rd_bank: int = 256
    """Also relate each batch to the last K finished texts (a memory bank; 0 = batch-level RD only)."""
    anchor_weight: float = 0.0
    """Weight of the anchor loss (a fixed projection of e pulled towards the teacher embedding)."""
    frame_pin: float = 2.0
    """> 0: a hard frame (the default): e's component in a subspace of frame_dims coordinates is held at a fixed
    sketch of the text's teacher embedding, scaled to this many token norms, for the whole fit; only the rest of e
    and m are fitted (`nar.losses.FramePin`). STS-B dev pairs fitted in different batches, at convergence: e's
    Spearman with human scores 0.785 on 24 pairs (teacher 0.835; 41/48 exact, plain fitting 40/48) and 0.706 on
    100 pairs (teacher 0.805; 159/200 exact) (docs/ANALYSES.md).
    0: the frame is only e's start (FitConfig.init 'teacher') and the RD/anchor losses, which it does not survive."""
    frame_dims: int = 64
    """With frame_pin: how many coordinates of e are pinned, through a fixed random k-dim sketch of the teacher
    vector (cosines kept approximately); 0 = all of the teacher's. Never more than half of the LLM's width (the
    rest of e stays free): 64 on SmolLM2 kept exactness, all 384 cost 15 points of exact texts."""
    projection_seed: int = 0
    """Seed of the fixed teacher<->proto-token projection (teacher init and anchor loss)."""
    warm_start: str = "none"
    """'neighbour': start each new text's e and m at the proto-tokens of its nearest corpus row in
    teacher space (amortised fitting: needs rows already in the corpus); 'encoder': start them at an
    encoder's prediction from the row's source (its target for text corpora; see warm_start_encoder);
    'none': the init of FitConfig."""
    warm_start_encoder: str | None = None
    """Encoder checkpoint (a `nar train-encoder` run folder or checkpoint) for warm_start='encoder'; it must
    have been trained for this LLM and layout."""
    shard_size: int = 1024
    """Rows per shard after the end-of-run compaction."""
    log_dir: str | None = None
    """TensorBoard log folder; default CORPUS_DIR/tb."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda', ..."""
    rank: int = 0
    """This worker's rank (multi-process builds take the rows with index % world_size == rank)."""
    world_size: int = 1
    """Number of workers sharing the input."""

    def __post_init__(self) -> None:
        _check(self.on_long in ("skip", "truncate"), "on_long must be 'skip' or 'truncate'")
        _check(self.rd_weight >= 0 and self.anchor_weight >= 0, "loss weights must be >= 0")
        _check(self.frame_pin >= 0 and self.frame_dims >= 0, "frame_pin and frame_dims must be >= 0")
        _check(self.rd_target in ("e", "m", "em"), "rd_target must be 'e', 'm' or 'em'")
        _check(self.rd_bank >= 0, "rd_bank must be >= 0")
        _check(self.warm_start in ("none", "neighbour", "encoder"),
               "warm_start must be 'none', 'neighbour' or 'encoder'")
        _check((self.warm_start == "encoder") == (self.warm_start_encoder is not None),
               "--warm-start encoder needs --warm-start-encoder PATH (and that option needs --warm-start encoder)")
        _check(self.shard_size >= 1, "shard_size must be >= 1")
        _check(self.limit is None or self.limit >= 1, "limit must be >= 1")
        _check(0 <= self.rank < self.world_size, "rank must be in [0, world_size)")
        _check(self.text_column is None or (self.source_column is None and self.target_column is None),
               "give --text-column, or --source-column with --target-column, not both")
        _check((self.source_column is None) == (self.target_column is None),
               "--source-column and --target-column go together")


# corpora built before the frame pin had none (their manifests lack the fields)
BuildConfig.LEGACY = {"frame_pin": 0.0, "frame_dims": 0}


@dataclass(frozen=True)
class PairsConfig(StageConfig):
    """How `nar make-pairs` turns prompts into (prompt -> the frozen LLM's own greedy reply) pairs."""

    template: str = "{}"
    """Wraps each prompt: '{}' is replaced by it (e.g. 'Paraphrase this sentence: {}')."""
    column: str = "prompt"
    """Field of a .jsonl input that holds the prompt."""
    max_new_tokens: int = 32
    """Longest reply, in tokens (a reply cut there is marked hit_limit)."""
    chat: bool = True
    """Wrap each prompt in the model's chat template."""
    batch_size: int = 8
    """Prompts generated at once."""
    limit: int | None = None
    """Use only the first this many prompts."""

    def __post_init__(self) -> None:
        _check("{}" in self.template, f"template {self.template!r} has no {{}} for the prompt")
        _check(self.max_new_tokens >= 1 and self.batch_size >= 1, "max_new_tokens and batch_size must be >= 1")


@dataclass(frozen=True)
class EncoderConfig(StageConfig):
    """The encoder network: source text -> (e, m, N).

    The head is compositional: each source token, with its position, is mapped on its own through a small MLP and
    the parts are summed, so a source never seen is a new sum of seen parts (docs/ENCODER.md, "The levers")."""

    reader: str = "llm"
    """What reads the source: 'llm' (the frozen LLM's own states of the source) or a sentence-transformers model
    name or path (e.g. the embedded 'all-MiniLM-L6-v2'; frozen)."""
    reader_layer: int = 0
    """With reader 'llm': which hidden layer feeds the head (0: the input embeddings, token by token, which keeps
    the head compositional; -1: the last, normalised, contextual)."""
    d_model: int = 256
    """Width of the head's layers."""
    layers: int = 2
    """Residual MLP blocks applied to each source token before the sum (0: a head linear in the token states)."""
    dropout: float = 0.1
    """Dropout in the head."""
    unk_below: int = 0
    """> 0: every source token seen fewer than this many times in the training sources is read as one learned
    'unknown' vector (the target keeps the real token), so a rare word marks its slot without garbling the code of
    the words around it (+0.015 held-out token accuracy on all STS-B dev, docs/ENCODER.md). The set of known
    tokens is stored in the checkpoint. 0: off."""
    max_len: int = 64
    """Largest output length N the length head can predict."""
    context: str = "none"
    """Where the decoding LLM meets the source: 'none' (only through e and m, Paper A's input), 'source' (the
    source's tokens also stand before e in the same one pass) or 'chat' (the source as a chat prompt there)."""

    REMOVED = {"ctc_slots": 0, "m_readout": "repeat", "bind": False, "post_layers": 0, "center_grad": False,
               "token_table": 0, "unk_mode": "replace", "init_spread": 0.0, "out_norm": 0.0, "pos_codes": False,
               "n_e": 1, "head": "sum", "lora_rank": 0, "finetune_reader": False, "max_source_tokens": 128}
    """Levers that measured no gain (docs/ENCODER.md) and left the code, with the value that means 'off': a saved
    config that used one is refused with the tag where it still runs."""

    def __post_init__(self) -> None:
        _check(self.context in CONTEXTS, f"context must be one of {CONTEXTS}")
        _check(self.max_len >= 1 and self.d_model >= 1, "max_len and d_model must be >= 1")
        _check(self.layers >= 0 and self.unk_below >= 0, "layers and unk_below must be >= 0")
        _check(0 <= self.dropout < 1, "dropout must be in [0, 1)")

    @classmethod
    def from_dict(cls, d: dict):
        d = {"head": "attention", **d}  # configs written before the sum head lack the field
        used = {k: d[k] for k, off in cls.REMOVED.items() if k in d and d[k] != off}
        if used:
            raise NarError("this encoder uses options that measured no gain and were removed ("
                           + ", ".join(f"{k}={v!r}" for k, v in used.items())
                           + f"); load it with the nar at git tag {STUDY_TAG}")
        return super().from_dict(d)


CONTEXTS = ("none", "source", "chat")


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """How `nar train-encoder` trains (the network's shape is EncoderConfig).

    Training data is one or more text sources mixed by weight (amortised training: the loss is the reconstruction
    cross-entropy through the frozen LLM, no fitted proto-tokens needed), or one corpus folder from build-corpus
    (its fitted proto-tokens add a regression target). Under `accelerate launch` / `torchrun` the global batch is
    split over the processes."""

    data: tuple[str, ...] = ()
    """Training sources: files (.jsonl, .json, .csv, .tsv, .parquet, .txt, optionally .gz), globs of them, folders
    saved with `datasets`, or one corpus folder. Rows are read lazily (memory-mapped Arrow), not held in memory."""
    weights: tuple[float, ...] = ()
    """Sampling weight of each data source, in the order given (empty: every source weighs 1). A batch draws each
    text from source i with probability weights[i] / sum(weights), whatever the sources' sizes."""
    run_dir: str = "checkpoints/encoder"
    """Where best/ and last/ checkpoints and the TensorBoard log go."""
    source_column: str = "text"
    """Column of the data holding the source (a .txt file's lines are 'text')."""
    target_column: str | None = None
    """Column holding the target (default: the source column itself, i.e. autoencoding)."""
    val_data: str | None = None
    """A held-out data file (same columns); without it 10% of the first source (seeded, at most 2,000 texts) is
    held out of training."""
    max_tokens: int = 16
    """Targets longer than this many tokens (EOS included) are never drawn."""
    append_eos: bool = False
    """Append EOS to every target (seq2seq replies: the output is cut at the first EOS)."""
    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 16
    """Texts per optimiser step, over all processes and accumulation steps together (the global batch)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step in each process (the global batch is split over processes x grad_accum)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to 10%)."""
    warmup: int = 50
    """Warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    curriculum: int = 0
    """Length curriculum: over this many steps the longest target drawn grows from 4 tokens to max_tokens (0: off)."""
    w_reg: float = 1.0
    """Weight of the regression to a corpus's fitted proto-tokens (cosine + MSE of unit vectors, e and m);
    used only when training from a corpus folder."""
    novel_tokens: float = 0.0
    """Autoencoding augmentation: the share of training texts in which one word-start token (not the first) is
    replaced by a random word-start token no training target holds, source and target alike, so the encoder learns
    to keep the sentence in place around a word it cannot know (docs/ENCODER.md). 0: off."""
    val_every: int = 200
    """Validate (and keep the best checkpoint in best/) every this many steps."""
    val_limit: int = 200
    """Held-out texts used by the periodic validation (eval-encoder evaluates all)."""
    save_every: int = 200
    """Write last/ (weights and optimizer state) every this many steps, for --resume."""
    precision: str = "auto"
    """Autocast of the frozen LLM's pass and the reader: 'bf16', 'fp32' or 'auto' (bf16 where native)."""
    seed: int = 0
    """Seed of the held-out split, the head's init, the batches and dropout."""
    resume: bool = False
    """Continue from run_dir/last (if there is none yet, start from step 0): bit for bit at the same number of
    processes, from the same weights and optimizer state at another. With a larger --steps a finished run trains
    on to the new total under the schedule of the new total (a warm restart)."""
    init_from: str | None = None
    """Start from the weights of this encoder checkpoint (a folder with config.json and model.safetensors, or a
    run folder: its best/) with a fresh optimiser and schedule: fine-tuning, e.g. of the shipped checkpoint on new
    data. The encoder options are the checkpoint's."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1,
               "steps, batch_size and grad_accum must be >= 1")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}")
        _check(self.lr > 0 and self.w_reg >= 0 and self.weight_decay >= 0,
               "lr must be > 0, w_reg and weight_decay >= 0")
        _check(0 <= self.novel_tokens <= 1, "novel_tokens must be in [0, 1]")
        _check(self.max_tokens >= 1 and self.val_every >= 1 and self.save_every >= 1 and self.val_limit >= 1,
               "max_tokens, val_every, save_every and val_limit must be >= 1")
        _check(all(w > 0 for w in self.weights), "weights must be > 0")

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        if d.get("text_column") and not d.get("source_column"):  # configs saved before source_column took over
            d["source_column"] = d["text_column"]
        if isinstance(d.get("data"), str):
            d["data"] = (d["data"],)
        for k in ("data", "weights"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return super().from_dict(d)


@dataclass(frozen=True)
class IndexConfig(StageConfig):
    """A FAISS index over a corpus (`nar index build`, `nar neighbors`)."""

    space: str = "e"
    """Proto-token space: 'e', 'm' or 'em' (e and m, each half normalised), or 'teacher'."""
    kind: str = "flat"
    """'flat' (exact), 'ivf' (large corpora) or 'hnsw' (graph)."""
    nlist: int | None = None
    """IVF lists (default 4*sqrt(N))."""
    nprobe: int = 8
    """IVF lists visited per query."""
    hnsw_m: int = 32
    """HNSW neighbours per node."""
    ef_search: int = 64
    """HNSW search breadth."""

    def __post_init__(self) -> None:
        _check(self.space in ("e", "m", "em", "teacher"), "space must be 'e', 'm', 'em' or 'teacher'")
        _check(self.kind in ("flat", "ivf", "hnsw"), "kind must be 'flat', 'ivf' or 'hnsw'")
        _check(min(self.nprobe, self.hnsw_m, self.ef_search) >= 1 and (self.nlist or 1) >= 1, "sizes must be >= 1")


@dataclass(frozen=True)
class StabilityConfig(StageConfig):
    """`nar analyze stability`: accuracy of converged rows under noise on e, m or both."""

    sample: int = 32
    """Converged texts to perturb (a seeded sample)."""
    alphas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    """Noise intensities (expected noise norm / vector norm)."""
    repeats: int = 3
    """Noise draws per intensity."""
    seed: int = 0
    """Seed of the sample and of the noise."""

    def __post_init__(self) -> None:
        _check(self.sample >= 1 and self.repeats >= 1, "sample and repeats must be >= 1")
        _check(len(self.alphas) >= 1 and min(self.alphas) >= 0, "alphas must be >= 0")


@dataclass(frozen=True)
class AttentionConfig(StageConfig):
    """`nar analyze attention`: attention paid to e (and the prefix) per layer and head."""

    sample: int = 16
    """Converged texts to average over (a seeded sample)."""
    seed: int = 0
    """Seed of the sample."""

    def __post_init__(self) -> None:
        _check(self.sample >= 1, "sample must be >= 1")


@dataclass(frozen=True)
class SemanticsConfig(StageConfig):
    """`nar analyze semantics`: STS-B Spearman of e, m, e+m and the teacher per fitting variant, and the
    augmentation experiment."""

    stsb: str | None = None
    """STS-B tsv in GLUE layout (sentence1, sentence2, score), e.g. GLUE's STS-B dev.tsv; required."""
    pairs: int = 100
    """STS-B pairs (a seeded sample)."""
    variants: tuple[str, ...] = ("none", "default")
    """Fitting variants to compare (nar.analysis.semantics.STS_VARIANTS; see docs/ANALYSES.md)."""
    max_steps: int = 200
    """Steps per text."""
    slots: int = 8
    """Texts fitted at once."""
    augment: str = "bundled"
    """Original/lexical/semantic triples (.jsonl): 'bundled' (nar/assets/augment.jsonl), a path, or 'none'."""
    augment_steps: int | None = None
    """Steps per augmentation text (default max_steps)."""
    precision: str = "auto"
    """'bf16' autocast, 'fp32', or 'auto' (bf16 where the device computes it natively)."""

    def __post_init__(self) -> None:
        _check(self.stsb is not None, "give the STS-B file: --stsb PATH (GLUE's STS-B dev.tsv)")
        _check(self.pairs >= 2 and self.max_steps >= 1 and self.slots >= 1, "pairs >= 2, max_steps and slots >= 1")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}")


@dataclass(frozen=True)
class CapacityConfig(StageConfig):
    """`nar analyze capacity`: accuracy vs N, the largest N two proto-tokens reconstruct."""

    texts: int = 3
    """How many long texts (the bundled texts joined in order)."""
    ns: tuple[int, ...] = (8, 16, 24, 32, 48)
    """Target lengths N."""
    max_steps: int = 800
    """Steps per (text, N)."""
    threshold: float = 0.99
    """Accuracy that counts as reconstructed."""
    precision: str = "auto"
    """'bf16' autocast, 'fp32', or 'auto' (bf16 where the device computes it natively)."""
    m: str = "per-text"
    """'per-text' (each (text, N) its own e and m), 'shared' (for each N one m for all texts, Paper A's second
    table) or 'both'."""

    def __post_init__(self) -> None:
        _check(self.texts >= 1 and len(self.ns) >= 1 and min(self.ns) >= 1, "texts and every N must be >= 1")
        _check(0 < self.threshold <= 1, "threshold must be in (0, 1]")
        _check(self.m in ("per-text", "shared", "both"), "m must be 'per-text', 'shared' or 'both'")

    def fit_config(self) -> FitConfig:
        return FitConfig(max_steps=self.max_steps, target_acc=self.threshold, precision=self.precision,
                         max_tokens=max(self.ns))


@dataclass(frozen=True)
class ConnectivityConfig(StageConfig):
    """`nar analyze connectivity`: two solutions of a text, joined by a line and by a trained Bezier curve."""

    file: str | None = None
    """Texts, one per line (default: the bundled demo sentences, nar/assets/demo.txt)."""
    texts: int = 2
    """How many texts of the file."""
    max_steps: int = 400
    """Steps per solution."""
    curve_steps: int = 150
    """Most steps training the Bezier control point (it stops early once the whole curve is exact)."""
    grid: int = 11
    """Points along each path."""

    def __post_init__(self) -> None:
        _check(min(self.texts, self.max_steps, self.curve_steps) >= 1 and self.grid >= 2, "sizes must be >= 1")

    def fit_config(self) -> FitConfig:
        return FitConfig(max_steps=self.max_steps)


def load_recipe(path) -> tuple[TrainConfig, EncoderConfig]:
    """A training recipe file (TOML, or JSON with the same layout): `[train]` holds TrainConfig fields, `[encoder]`
    EncoderConfig fields (an `[about]` table is free text); anything else is refused by name. Relative data paths
    stay relative to the working directory (recipes are run from the repository root)."""
    import tomllib
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except OSError as exc:
        raise NarError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise NarError(f"recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc
    extra = sorted(set(raw) - {"train", "encoder", "about"})
    if extra:
        raise NarError(f"recipe {path}: unknown table(s) {extra}; a recipe has [train] and [encoder] (and [about])")
    for key, cls in (("train", TrainConfig), ("encoder", EncoderConfig)):
        unknown = sorted(set(raw.get(key, {})) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise NarError(f"recipe {path}: [{key}] has no field(s) {unknown}; see `nar train-encoder --help`")
    return TrainConfig.from_dict(raw.get("train", {})), EncoderConfig(**raw.get("encoder", {}))
