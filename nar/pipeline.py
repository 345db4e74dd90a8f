"""The public Python API: one object that holds the frozen LLM (and, for generation, an encoder) and does
what the CLI does.

    from nar.pipeline import Pipeline

    nar = Pipeline.from_pretrained()                      # embedded SmolLM2-135M-Instruct, frozen
    rows = nar.reconstruct(["The cat sat on the mat."])   # fit two vectors, decode in ONE forward pass
    protos = nar.fit(["The cat sat on the mat."])         # the proto-tokens (a ProtoSet: save / load)
    nar.decode(protos)                                    # -> ["The cat sat on the mat."]
    nar.neighbors("corpora/texts", text="A new sentence.", k=5)
    gen = Pipeline.from_pretrained(encoder="checkpoints/pairs")
    gen.generate(["Name a fruit that is yellow."])        # source -> encoder -> one pass -> text

Every method takes the stage's config (`nar.config`) where the CLI has options, with the same defaults.
"""

from __future__ import annotations

from pathlib import Path

from nar import corpus as corpus_store
from nar.config import CORPUS_FIT, BuildConfig, FitConfig
from nar.decode import decode_texts
from nar.errors import NarError
from nar.llm import DEFAULT_MODEL, FrozenLLM, load_llm
from nar.protos import ProtoSet


class Pipeline:
    """A frozen LLM, an optional encoder (source -> proto-tokens) and, loaded when first needed, the teacher."""

    def __init__(self, llm: FrozenLLM, encoder=None, teacher=None):
        self.llm, self.encoder, self._teacher = llm, encoder, teacher
        if encoder is not None:
            encoder.check_llm(llm)

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, encoder: str | Path | None = None,
                        device: str = "auto") -> Pipeline:
        """Load the frozen LLM (`nar.llm.load_llm`: the embedded default, a folder or a hub id) and, optionally,
        an encoder checkpoint (a `nar train-encoder` run folder, or its best/ or last/)."""
        llm = load_llm(model, device=device)
        enc = None
        if encoder is not None:
            from nar.encoder import Encoder

            enc = Encoder.from_pretrained(encoder, llm=llm)
        return cls(llm, enc)

    @property
    def teacher(self):
        if self._teacher is None:
            from nar.teacher import load_teacher

            self._teacher = load_teacher()
        return self._teacher

    def reconstruct(self, texts: list[str], cfg: FitConfig = FitConfig(), *, show_progress: bool = False
                    ) -> list[dict]:
        """Fit each text, decode it in one forward pass; one dict per text (text, decoded, accuracy, steps, ...)."""
        from nar.reconstruct import reconstruct

        return reconstruct(texts, cfg, model=self.llm, show_progress=show_progress)[0]

    def fit(self, texts: list[str], cfg: FitConfig = FitConfig(), *, show_progress: bool = False) -> ProtoSet:
        """The fitted proto-tokens of each text (`ProtoSet.save(path)` keeps them)."""
        from nar.reconstruct import reconstruct

        return reconstruct(texts, cfg, model=self.llm, show_progress=show_progress)[1]

    def decode(self, protos: ProtoSet | str | Path, *, precision: str = "fp32") -> list[str]:
        """The texts of proto-tokens (a ProtoSet or a saved file), one forward pass; refuses proto-tokens
        fitted on another model."""
        protos = ProtoSet.load(protos, llm=self.llm) if isinstance(protos, (str, Path)) else protos
        protos.check_llm(self.llm)
        stop = bool(protos.meta.get("fit_config", {}).get("append_eos"))
        return decode_texts(self.llm, protos.e, protos.m, protos.n_tokens, protos.layout, precision=precision,
                            stop_at_eos=stop)

    def generate(self, sources: list[str], **kwargs) -> list[str]:
        """One output text per source: encoder -> (e, m, N) -> ONE forward pass (`nar.generate.generate`'s
        keyword arguments, e.g. precision, batch_size)."""
        if self.encoder is None:
            raise NarError("this pipeline has no encoder: Pipeline.from_pretrained(..., encoder=CHECKPOINT)")
        from nar.generate import generate

        return [r["output"] for r in generate(self.encoder, self.llm, list(sources), **kwargs)]

    def neighbors(self, corpus: str | Path, *, text: str | None = None, id: str | None = None, k: int = 10,
                  space: str = "e", kind: str = "flat") -> dict:
        """The k nearest texts of a corpus (built with this LLM) to a text or a row (`nar.search.neighbors`)."""
        from nar.search import neighbors

        return neighbors(corpus, id=id, text=text, k=k, space=space, kind=kind, llm=self.llm,
                         teacher=self.teacher if text is not None else None)

    def build_corpus(self, input: str | Path, out: str | Path, fit: FitConfig = CORPUS_FIT, *,
                     show_progress: bool = False, **build) -> dict:
        """Fit every text of `input` into the resumable corpus `out` (`nar.build.build_corpus`); `build` are
        BuildConfig fields (text_column, rd_weight, ...). Returns the run's summary."""
        from nar.build import build_corpus

        bcfg = BuildConfig(input=str(input), out=str(out), **build)
        return build_corpus(bcfg, fit, llm=self.llm, teacher=self.teacher, show_progress=show_progress)

    def corpus(self, path: str | Path):
        """A corpus as a `datasets.Dataset` (torch formatting)."""
        return corpus_store.load(path)
