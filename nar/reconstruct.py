"""The reconstruction job: fit proto-tokens to texts, then decode them in one forward pass."""

from __future__ import annotations

from nar import __version__
from nar.artifacts import llm_record
from nar.backends import get_backend
from nar.config import FitConfig
from nar.decode import decode_ids, token_accuracy
from nar.fit import fit_texts, make_layout, prepare_ids
from nar.llm import FrozenLLM, load_llm
from nar.monitor import FitProgress
from nar.protos import ProtoSet


def reconstruct(texts: list[str], cfg: FitConfig, *, model: str | FrozenLLM = "smollm2-135m-instruct",
                device: str = "auto", show_progress: bool = True, backend: str = "torch"
                ) -> tuple[list[dict], ProtoSet]:
    """Fit every text, decode the best vectors with one forward pass, and compare.

    Returns one row per text (text, decoded, accuracy, steps, seconds, n_tokens, converged,
    decoded_accuracy) and the proto-tokens as a ProtoSet ready to save.
    `accuracy` is measured during fitting; `decoded_accuracy` re-measures it by an independent
    one-pass decode in fp32, so a bf16-fitted solution that only holds under bf16 shows up here.
    `backend` runs the first decode (`nar.backends`); the fp32 check always runs on torch.
    """
    llm = model if isinstance(model, FrozenLLM) else load_llm(model, device=device)
    for t in texts:  # fail on bad input before any model time is spent
        prepare_ids(llm, t, cfg)
    backend = get_backend(backend, llm, cfg.precision)
    with FitProgress(len(texts), "fitting", enabled=show_progress) as prog:
        results = fit_texts(llm, texts, cfg, on_step=prog.on_step, on_result=prog.on_result)
    layout = make_layout(llm, cfg)
    protos = ProtoSet.from_results(results, layout, {"texts": texts, "fit_config": cfg.to_dict(),
                                                     "llm": llm_record(llm), "nar_version": __version__})
    stop = cfg.append_eos
    pred = decode_ids(llm, protos.e, protos.m, protos.n_tokens, layout, precision=cfg.precision,
                      stop_at_eos=stop, backend=backend)
    pred32 = decode_ids(llm, protos.e, protos.m, protos.n_tokens, layout, precision="fp32")
    rows = []
    for t, r, p, p32 in zip(texts, results, pred, pred32):
        rows.append({
            "text": t,
            "decoded": llm.tokenizer.decode(p, skip_special_tokens=True),
            "accuracy": round(r.accuracy, 4),
            "decoded_accuracy": round(token_accuracy(p32, r.token_ids), 4),
            "steps": r.steps,
            "seconds": round(r.seconds, 2),
            "n_tokens": r.n_tokens,
            "converged": r.converged,
            "final_loss": round(r.loss, 5),
        })
    return rows, protos


__all__ = ["reconstruct"]
