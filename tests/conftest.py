"""Shared fixtures: a tiny random Llama with its own tiny tokenizer, built offline in seconds."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_CORPUS = [
    "the cat sat on the mat", "a dog ran in the park", "the sun is warm today", "we like to read books",
    "rain falls on the green hills", "she plays the piano at night", "the train left the station early",
    "birds sing in the morning", "he wrote a letter to his friend", "the river runs to the sea",
    "cold water and hot tea", "my brother fixed the old bike", "stars shine over the quiet town",
]


def build_tiny_llm(path, seed: int = 0, hidden: int = 64, layers: int = 2):
    """Save a tiny random Llama + a word-level tokenizer into `path`; returns the path."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(TINY_CORPUS, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    from tokenizers import decoders

    # a separate pad token: Llama zeroes the pad row of the (tied) embedding, which would make EOS
    # unreachable by argmax if EOS doubled as pad
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.2,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                      pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llm(tiny_path):
    from nar.llm import load_llm

    return load_llm(str(tiny_path), device="cpu")


@pytest.fixture(scope="session")
def nar_cache(tmp_path_factory):
    """Where the real model is cached: the user's cache if set, else one per test session."""
    return os.environ.get("NAR_CACHE") or str(tmp_path_factory.mktemp("nar-cache"))


@pytest.fixture(scope="session")
def teacher():
    """The embedded sentence-embedding teacher (all-MiniLM-L6-v2 from its PyPI wheel, offline)."""
    from nar.teacher import load_teacher

    return load_teacher()


def nan_at_first_step(monkeypatch, slot: int) -> None:
    """Make the loss of the text in `slot` NaN at the first fitting step (and only there)."""
    import nar.fit as fit_mod

    real, state = fit_mod.reconstruction_loss, {"first": True}

    def flaky(*args, **kwargs):
        rec = real(*args, **kwargs)
        if state["first"]:
            state["first"] = False
            rec.ce = torch.cat([rec.ce[:slot], rec.ce[slot:slot + 1] * float("nan"), rec.ce[slot + 1:]])
        return rec

    monkeypatch.setattr(fit_mod, "reconstruction_loss", flaky)


def record_calls(monkeypatch, module, name: str) -> list[tuple]:
    """Wrap `module.name` so that each call's positional arguments are appended to the returned list; the real
    function still runs."""
    real, calls = getattr(module, name), []

    def recorded(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return calls


def run_training(data, cfg, ecfg, **kw):
    """`nar.train.train_encoder` on one data source (a file or a corpus folder)."""
    from nar.train import train_encoder

    return train_encoder(cfg.replace(data=(str(data),)), ecfg, **kw)
