"""The corpus frame: everything that makes a corpus's proto-tokens comparable with each other, and with new
texts fitted later.

- the corpus's frozen LLM and layout (`corpus_llm`, checked against the manifest's fingerprint);
- the fixed teacher -> proto-token projection Q (`nar.losses.teacher_projection`): the teacher-aligned
  init of e, the anchor loss and the frame pin;
- the memory bank of relational distillation, seeded from the rows already written, so a resumed run and
  a later query relate to the same texts as the first run (`corpus_frame`);
- where a new text starts: at its nearest corpus row (`neighbour_init`) or at an encoder's prediction
  (`encoder_init`);
- fitting new texts exactly as the corpus was fitted, without writing them (`fit_in_corpus_frame`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from nar import corpus as corpus_store
from nar.artifacts import check_llm, check_teacher
from nar.config import BuildConfig, FitConfig
from nar.errors import NarError
from nar.fit import FitItem, FitResult, fit_stream, make_layout, prepare_ids
from nar.llm import FrozenLLM, Layout, load_llm
from nar.losses import FramePin, MemoryBank, TeacherRegulariser, frame_pin, teacher_projection
from nar.space import proto_space
from nar.teacher import Teacher, load_teacher


def corpus_llm(path: str | Path, llm: FrozenLLM | None = None, device: str = "auto"
               ) -> tuple[FrozenLLM, Layout, str]:
    """The corpus's frozen LLM (loaded, or the one given after a fingerprint check), layout and precision."""
    man = corpus_store.read_manifest(path)
    if llm is None:
        llm = load_llm(man.get("build_config", {}).get("model", "smollm2-135m-instruct"), device=device)
    check_llm(man, llm, f"corpus {path}", verb="fitted with")
    return llm, Layout.from_dict(man["layout"]), man.get("fit_config", {}).get("precision", "fp32")


def seed_bank(path: str | Path, bank: MemoryBank, rd_target: str) -> None:
    """Start the memory bank from the last rows of the corpus already written (failed rows skipped)."""
    if bank.size == 0 or not Path(path).exists():
        return
    cols = corpus_store.columns(path, ["e", "m", "teacher", "failed"])
    if not len(cols["failed"]):
        return
    last = torch.arange(max(0, len(cols["failed"]) - bank.size), len(cols["failed"]))
    last = last[~torch.from_numpy(cols["failed"])[last]]
    e, m, t = (torch.from_numpy(cols[c])[last] for c in ("e", "m", "teacher"))
    for p, tv in zip(proto_space(e, m, rd_target), t):
        bank.add(p, tv)


@dataclass
class Frame:
    """What `fit_stream` needs to fit a text in a corpus's frame."""

    init_e: Callable[[torch.Tensor], torch.Tensor | None]
    """teacher vector (Dt,) -> e's start (D,), or None for FitConfig.init's own."""
    bank: MemoryBank
    loss: TeacherRegulariser | None
    """RD and anchor losses (fit_stream's extra_loss), or None."""
    pin: FramePin | None
    """The hard frame of e (fit_stream's pin_e), or None."""


def corpus_frame(out: str | Path, llm: FrozenLLM, teacher: Teacher, fcfg: FitConfig, bcfg: BuildConfig) -> Frame:
    """The corpus's one frame (the same for a first run, a resumed run and a later query)."""
    Q = None
    if fcfg.init == "teacher" or bcfg.anchor_weight > 0:
        Q = teacher_projection(teacher.dim, llm.hidden_size, bcfg.projection_seed)

    def init_e(t: torch.Tensor) -> torch.Tensor | None:
        return F.normalize(t @ Q, dim=0) * llm.embed_norm if fcfg.init == "teacher" else None

    bank = MemoryBank(bcfg.rd_bank if bcfg.rd_weight > 0 else 0)
    seed_bank(out, bank, bcfg.rd_target)
    reg = None
    if bcfg.rd_weight > 0 or bcfg.anchor_weight > 0:
        reg = TeacherRegulariser(bcfg.rd_weight, bcfg.anchor_weight, bcfg.rd_target, Q, bank)
    pin = None
    if bcfg.frame_pin > 0:
        pin = frame_pin(teacher.dim, llm.hidden_size, bcfg.frame_pin * llm.embed_norm, bcfg.frame_dims,
                        bcfg.projection_seed)
    return Frame(init_e, bank, reg, pin)


def neighbour_init(out: str | Path, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Warm start: for each teacher vector in T (B, d), the (e, m) of the nearest written row in teacher
    space (cosine), as two (B, D) tensors; None when the corpus has no usable row yet."""
    from nar.index import make_faiss_index

    if len(T) == 0 or not corpus_store.done_ids(out):
        return None
    cols = corpus_store.columns(out, ["e", "m", "teacher"], rows="ok")
    if len(cols["teacher"]) == 0:
        return None
    x = F.normalize(torch.from_numpy(cols["teacher"]), dim=1).numpy()
    _, nn = make_faiss_index(x, "flat").search(F.normalize(T.float(), dim=1).numpy(), 1)
    nn = torch.from_numpy(nn[:, 0])
    return torch.from_numpy(cols["e"])[nn], torch.from_numpy(cols["m"])[nn]


def encoder_init(path: str | Path, llm: FrozenLLM, fcfg: FitConfig,
                 sources: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm start: the (e, m) an encoder checkpoint predicts for each source, as two (B, D) tensors.
    The encoder must have been trained for this LLM and for the layout this fit uses."""
    from nar.encoder import Encoder

    enc = Encoder.from_pretrained(path, llm=llm)
    layout = make_layout(llm, fcfg)
    if enc.cfg.context != "none":
        raise NarError(f"encoder {path} decodes with its source in context; its proto-tokens mean nothing alone, "
                       "so they cannot warm-start a fit")
    if enc.layout != layout:
        raise NarError(f"encoder {path} predicts for layout {enc.layout.to_dict()}, this fit uses {layout.to_dict()}")
    e, m, _ = enc.predict(sources)
    return e, m


def fit_in_corpus_frame(path: str | Path, texts: list[str], *, llm: FrozenLLM | None = None,
                        teacher: Teacher | None = None, max_steps: int | None = None) -> list[FitResult]:
    """Fit new texts exactly as the corpus was fitted (same model, layout, init frame, regularisers),
    without writing them, e.g. to find their neighbours. Results in input order."""
    man = corpus_store.read_manifest(path)
    fcfg = FitConfig.from_dict({**man["fit_config"], **({"max_steps": max_steps} if max_steps else {})})
    bcfg = BuildConfig.from_dict(man["build_config"])
    llm, _, _ = corpus_llm(path, llm, bcfg.device)
    teacher = teacher or load_teacher(bcfg.teacher)
    check_teacher(man, teacher, str(path))
    frame = corpus_frame(path, llm, teacher, fcfg, bcfg)
    items = [FitItem(key=str(i), ids=prepare_ids(llm, text, fcfg), init_key=text, init_e=frame.init_e(t),
                     payload={"source": text, "target": text, "teacher": t})
             for i, (text, t) in enumerate(zip(texts, teacher.encode(texts)))]
    by_key = {r.key: r for r in fit_stream(llm, items, fcfg, extra_loss=frame.loss, pin_e=frame.pin)}
    return [by_key[str(i)] for i in range(len(texts))]
