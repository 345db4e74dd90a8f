"""One-pass decoding vs the fastest autoregressive (AR) CPU runtimes found here, same model, same run.

AR baselines (greedy, from the one-token prompt [bos], forced to exactly N new tokens, EOS ignored):
  transformers   `model.generate` eager, fp32 weights dequantised from the GGUF (the old baseline, and the
                 reference output of the AR agreement column)
  transformers bf16  the same under nar's bf16 autocast, where 'auto' picks bf16 (native bf16 only)
  llama.cpp      the embedded GGUF itself (Q4_1, Q8_0 head) through llama-cpp-python, KV cache, one sequence
                 id per batch row, argmax of the logits after each step
  ctranslate2    int8 weights converted from the same fp32 folder (once, cached), `generate_batch` top-1
  onnxruntime-genai  int4 (MatMulNBits) built by its own model builder from the same fp32 folder (once, cached)
  (openvino-genai is listed as not found when absent: it needs an optimum-intel export, not done here)
One-pass paths (nar's `--backend`s plus variants), over [bos, e, m x (N-1)], argmax at the last N positions:
  torch fp32, torch bf16 (autocast over bf16 copies of the Linear weights, nar's default decoding precision
  where bf16 is native; skipped elsewhere unless --force-bf16: emulated bf16 only times the emulation),
  llama.cpp (input embeddings in one batch, Q4_1 weights)
"nar gen" adds the encoder: source sentences -> the default encoder (the frozen LLM reads the source, a
small head; at the path's precision, 'auto' for llama.cpp) -> the same one pass
(untrained head: latency does not depend on weight values; N fixed to the cell's N).
Agreement ("agree"): an AR runtime's tokens vs transformers fp32's (the quantised runtimes drift once a
near-tie flips); each one-pass path's argmax vs torch fp32's on the timed (random) proto-tokens, and, with
--agreement K (default 8 with --quick), on K texts fitted by nar's engine (at precision 'auto', nar's default:
bf16 with the fp32 check where bf16 is native, else fp32; `--agreement-fit fp32|bf16` asks for one) and exact in
fp32: what matters, since a fitted solution sits near decision boundaries. A one-pass path counts for the headline
only if it decodes all of them as torch fp32 does. Every path prints its precision (`precision: ...`).
Latency is the median of --repeats runs after one warm-up. Timings are only meaningful alone on the
machine (this project: under `flock -x /tmp/nar-cpu.lock`).

    python -m bench.generate_speed --quick        # N=64, batch 1, 3 repeats
    python -m bench.generate_speed                # N in {32, 64} x batch in {1, 8}, 5 repeats
    python -m bench.generate_speed --full         # N in {16, 32, 64, 128} x batch in {1, 8}
    python -m bench.generate_speed --agreement 8  # also fit 8 texts (nar's engine) and compare the backends on them

`--quick` prints `fastest_ar: NAME`; the last line is `ratio: X` = the fastest AR runtime's ms over the
fastest agreeing one-pass path's ms at N=64, batch 1 (encoder excluded; the "nar gen" table includes it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import FORCE_HELP, pick_precision, say_precision
from nar.backends import LlamaCppBackend, TorchBackend, gguf_for
from nar.config import EncoderConfig
from nar.decode import decode_ids, generate_greedy
from nar.encoder import Encoder, make_reader
from nar.llm import Layout, cache_dir, load_llm

SOURCES = ["What is the capital of France?", "Name three primary colours.",
           "Write one sentence about the sea.", "How many legs does a spider have?",
           "Give me a synonym for happy.", "What do bees make?", "Describe a cat in five words.",
           "Why is the sky blue?"]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------
# AR runtimes: name -> (b, n) -> list of token-id lists


def ar_runtimes(llm, threads: int) -> tuple[dict, dict]:
    """The AR runtimes that can run here, and for the others why not; each one's precision is printed."""
    bos = llm.resolve_prefix("bos")
    found, missing = {}, {}
    found["transformers"] = lambda b, n: generate_greedy(llm, [list(bos)] * b, n, stop_at_eos=False)
    say_precision("AR transformers", "fp32", "on purpose: the reference output")
    auto, why = pick_precision("auto", llm.device)
    if auto == "bf16":

        def hf_bf16(b, n):
            with llm.autocast("bf16"):
                return generate_greedy(llm, [list(bos)] * b, n, stop_at_eos=False)
        found["transformers bf16"] = hf_bf16
        say_precision("AR transformers bf16", "bf16", why)
    else:
        missing["transformers bf16"] = why
    gguf = gguf_for(llm)
    if importlib.util.find_spec("llama_cpp") is None:
        missing["llama.cpp"] = "llama-cpp-python not installed"
    elif gguf is None:
        missing["llama.cpp"] = "no GGUF for this model"
    else:
        lcpp = LlamaCppBackend(gguf, threads=threads)
        found["llama.cpp"] = lambda b, n: lcpp.greedy([list(bos)] * b, n)
        say_precision("AR llama.cpp", "Q4_1", "the GGUF's own quantised weights")
    if importlib.util.find_spec("ctranslate2") is None:
        missing["ctranslate2"] = "ctranslate2 not installed"
    else:
        gen = ct2_generator(llm, threads)
        start = llm.tokenizer.convert_ids_to_tokens(list(bos))

        def ct2(b, n):
            res = gen.generate_batch([start] * b, max_length=n, min_length=n, sampling_topk=1, end_token=[],
                                     include_prompt_in_result=False)
            return [r.sequences_ids[0] for r in res]
        found["ctranslate2"] = ct2
        say_precision("AR ctranslate2", "int8", "its own quantised weights")
    if importlib.util.find_spec("onnxruntime_genai") is None:
        missing["onnxruntime-genai"] = "onnxruntime-genai not installed"
    else:
        import numpy as np
        import onnxruntime_genai as og

        model = og.Model(str(ortgenai_model(llm, threads)))

        def ortg(b, n):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(bos) + n, min_length=len(bos) + n, do_sample=False,
                                      batch_size=b)
            gen = og.Generator(model, params)
            gen.append_tokens(np.array([list(bos)] * b, dtype=np.int32))
            while not gen.is_done():
                gen.generate_next_token()
            return [[int(x) for x in gen.get_sequence(j)[len(bos):]] for j in range(b)]
        found["onnxruntime-genai"] = ortg
        say_precision("AR onnxruntime-genai", "int4", "its own quantised weights")
    if importlib.util.find_spec("openvino_genai") is None:
        missing["openvino-genai"] = "openvino-genai not installed"
    return found, missing


def ct2_generator(llm, threads: int):
    """CTranslate2 int8 model converted from the LLM's fp32 folder, cached by fingerprint."""
    import ctranslate2

    out = cache_dir() / "runtimes" / f"ct2-int8-{llm.fingerprint.split('@')[-1]}"
    if not (out / "model.bin").is_file():
        src = Path(llm.model.name_or_path)
        print(f"converting {src} to CTranslate2 int8 in {out} (once)", flush=True)
        ctranslate2.converters.TransformersConverter(str(src)).convert(str(out), quantization="int8", force=True)
    return ctranslate2.Generator(str(out), device="cpu", compute_type="int8", intra_threads=threads)


def ortgenai_model(llm, threads: int) -> Path:
    """ONNX Runtime GenAI int4 (CPU) model built by its own model builder from the LLM's fp32 folder, cached."""
    import subprocess
    import tempfile

    out = cache_dir() / "runtimes" / f"ortgenai-int4-{llm.fingerprint.split('@')[-1]}"
    if (out / "genai_config.json").is_file():
        return out
    src = Path(llm.model.name_or_path)
    print(f"building the ONNX Runtime GenAI int4 model from {src} in {out} (once)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"  # the cached folder's config has no `architectures`, which the builder needs
        hf.mkdir()
        for f in src.iterdir():
            if f.name != "config.json":
                (hf / f.name).symlink_to(f)
        cfg = json.loads((src / "config.json").read_text())
        cfg["architectures"] = [type(llm.model).__name__]
        (hf / "config.json").write_text(json.dumps(cfg))
        p = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o",
                            str(out), "-p", "int4", "-e", "cpu", "-c", str(Path(tmp) / "cache")],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit("onnxruntime-genai model builder failed:\n" + p.stderr[-2000:])
    gc = json.loads((out / "genai_config.json").read_text())
    gc["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (out / "genai_config.json").write_text(json.dumps(gc, indent=2))
    return out


# ----------------------------------------------------------------------------------------------
# One-pass paths: name -> a Backend


def one_pass_paths(llm, threads: int, force_bf16: bool = False) -> dict:
    """name -> a Backend; torch bf16 only where bf16 is native (or forced). Prints each path's precision."""
    paths = {"torch fp32": TorchBackend(llm, "fp32")}
    say_precision("one pass, torch fp32", "fp32", "on purpose: the reference of the agreement columns")
    bf16, why = pick_precision("bf16", llm.device, force_bf16=force_bf16)
    say_precision("one pass, torch bf16", bf16, why)
    if bf16:
        paths["torch bf16"] = TorchBackend(llm, "bf16")
    gguf = gguf_for(llm)
    if importlib.util.find_spec("llama_cpp") is not None and gguf is not None:
        paths["llama.cpp"] = LlamaCppBackend(gguf, threads=threads)
        say_precision("one pass, llama.cpp", "Q4_1", "the GGUF's own quantised weights")
    return paths


def encoder_precision(be) -> str:
    """The precision the encoder runs at before a one-pass path: the torch path's own, 'auto' before llama.cpp."""
    return be.precision if isinstance(be, TorchBackend) else "auto"


def fitted_agreement(llm, paths: dict, layout: Layout, k: int, precision: str = "fp32") -> dict:
    """Fit k texts of ~16 tokens with nar's engine at `precision` ('bf16' counts a text only when it also decodes
    exactly in fp32; 'fp32' fits in fp32), then decode them with every path."""
    from nar.config import FitConfig
    from nar.data import bundled_texts
    from nar.fit import fit_texts

    texts = [r["text"] for r in bundled_texts() if 15 <= len(llm.encode(r["text"])) <= 17][:k]
    cfg = FitConfig(precision=precision, max_steps=300)
    res = [r for r in fit_texts(llm, texts, cfg) if r.converged]
    res = [r for r in res if decode_ids(llm, r.e[None], r.m[None], [r.n_tokens], layout, precision="fp32")[0]
           == r.token_ids]  # exact in fp32 (the reference), whichever engine fitted them
    out = {"fitted": len(texts), "fit_precision": precision, "exact_fp32": len(res)}
    if not res:
        return out
    e, m = torch.stack([r.e for r in res]), torch.stack([r.m for r in res])
    for name, be in paths.items():
        pred = decode_ids(llm, e, m, [r.n_tokens for r in res], layout, backend=be)
        exact = sum(p == r.token_ids for p, r in zip(pred, res))
        tok = sum(sum(a == b for a, b in zip(p, r.token_ids)) for p, r in zip(pred, res))
        out[name] = {"texts_exact": exact, "token_agreement": tok / sum(r.n_tokens for r in res)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", default="32,64", help="comma-separated output lengths")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--agreement", type=int, default=None,
                    help="fit this many texts with nar's engine and compare the paths on them (default: 8 with "
                         "--quick, else 0); a path counts for the headline only if it decodes all of them as "
                         "torch fp32 does")
    ap.add_argument("--agreement-fit", default="auto", choices=["auto", "bf16", "fp32"],
                    help="the precision that fits them: 'auto' (nar's default: bf16, fp32-checked, where bf16 is "
                         "native, else fp32), or one asked for (bf16 where it is not native needs --force-bf16)")
    ap.add_argument("--force-bf16", action="store_true", help=FORCE_HELP)
    ap.add_argument("--skip-ar", default="", help="comma-separated AR runtimes not to time")
    ap.add_argument("--quick", action="store_true", help="N=64, batch 1, 3 repeats")
    ap.add_argument("--full", action="store_true", help="N in {16,32,64,128} x batch in {1,8}")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.full:
        args.n, args.batch = "16,32,64,128", "1,8"
    if args.quick:
        args.n, args.batch, args.repeats = "64", "1", 3
        args.agreement = 8 if args.agreement is None else args.agreement
    torch.set_num_threads(args.threads)
    llm = load_llm(args.model, device="cpu")
    bos = llm.resolve_prefix("bos")
    layout = Layout(bos, "e")
    g = torch.Generator().manual_seed(0)
    ars, missing = ar_runtimes(llm, args.threads)
    for k in filter(None, args.skip_ar.split(",")):
        ars.pop(k, None)
        missing[k] = "skipped (--skip-ar)"
    paths = one_pass_paths(llm, args.threads, args.force_bf16)
    for name, be in paths.items():
        prec, why = pick_precision(encoder_precision(be), llm.device, force_bf16=args.force_bf16)
        say_precision(f"nar gen's encoder before {name}", prec, why)
    fit_precision = None
    if args.agreement:
        fit_precision, why = pick_precision(args.agreement_fit, llm.device, force_bf16=args.force_bf16)
        if fit_precision is None:  # bf16 asked where it is emulated: fit in fp32 rather than for an hour
            fit_precision, why = "fp32", f"bf16 {why}; fp32 instead"
        say_precision(f"fitting the {args.agreement} agreement texts", fit_precision, why)
    print(f"model {llm.fingerprint}  threads {torch.get_num_threads()}  repeats {args.repeats}")
    print("AR runtimes found: " + ", ".join(ars) + ("; not: " + "; ".join(f"{k} ({v})" for k, v in missing.items())
                                                   if missing else ""))
    print("one-pass paths: " + ", ".join(paths))
    ecfg = EncoderConfig()  # the default encoder: the frozen LLM reads the source, a small head emits (e, m, N)
    enc = Encoder(ecfg, make_reader(ecfg, llm), llm.hidden_size, meta={}).eval()

    rows = []
    for b in [int(x) for x in args.batch.split(",")]:
        sources = (SOURCES * (b // len(SOURCES) + 1))[:b]
        for n in [int(x) for x in args.n.split(",")]:
            e = torch.randn(b, llm.hidden_size, generator=g) * llm.embed_std
            m = torch.randn(b, llm.hidden_size, generator=g) * llm.embed_std
            ref = decode_ids(llm, e, m, [n] * b, layout, backend=paths["torch fp32"])
            for name, be in paths.items():
                one = median_seconds(lambda: decode_ids(llm, e, m, [n] * b, layout, backend=be), args.repeats)
                pred = decode_ids(llm, e, m, [n] * b, layout, backend=be)
                agree = sum(x == y for p, r in zip(pred, ref) for x, y in zip(p, r)) / (b * n)

                def gen():
                    with torch.no_grad(), llm.autocast(encoder_precision(be)):
                        ee, mm, _ = enc(sources)
                    return decode_ids(llm, ee.float(), mm.float(), [n] * b, layout, backend=be)
                full = median_seconds(gen, args.repeats)
                rows.append({"kind": "one-pass", "name": name, "n": n, "batch": b, "ms": one * 1e3,
                             "gen_ms": full * 1e3, "tok_s": b * n / one, "agreement": agree})
                print(json.dumps(rows[-1]), flush=True)
            ar_ref = None
            for name, fn in ars.items():
                ar = median_seconds(lambda: fn(b, n), args.repeats)
                out = fn(b, n)
                assert all(len(x) == n for x in out), (name, [len(x) for x in out])
                ar_ref = ar_ref or out  # transformers fp32 comes first: the reference output
                agree = sum(x == y for p, r in zip(out, ar_ref) for x, y in zip(p, r)) / (b * n)
                rows.append({"kind": "AR", "name": name, "n": n, "batch": b, "ms": ar * 1e3, "tok_s": b * n / ar,
                             "agreement": agree})
                print(json.dumps(rows[-1]), flush=True)

    agreement = fitted_agreement(llm, paths, layout, args.agreement, fit_precision) if args.agreement else None
    if agreement:
        print(json.dumps({"fitted_agreement": agreement}), flush=True)

    def ok(name: str) -> bool:  # a one-pass path counts for the headline only if it reproduces torch fp32
        if agreement and name in agreement:
            return agreement[name]["texts_exact"] == agreement["exact_fp32"]
        return all(r["agreement"] == 1.0 for r in rows if r["kind"] == "one-pass" and r["name"] == name)

    print(f"\n{'N':>4} {'batch':>5} {'kind':8} {'runtime':17} {'ms':>9} {'tok/s':>8} {'agree':>6}  "
          f"{'fastest AR / this':>17}")
    summary = {}
    for b in sorted({r["batch"] for r in rows}):
        for n in sorted({r["n"] for r in rows}):
            cell = [r for r in rows if r["batch"] == b and r["n"] == n]
            ar = min((r for r in cell if r["kind"] == "AR"), key=lambda r: r["ms"])
            one = min((r for r in cell if r["kind"] == "one-pass" and ok(r["name"])), key=lambda r: r["ms"])
            summary[(n, b)] = (ar, one)
            for r in cell:
                agree = f"{r['agreement']:.3f}" if "agreement" in r else ""
                print(f"{n:>4} {b:>5} {r['kind']:8} {r['name']:17} {r['ms']:>9.1f} {r['tok_s']:>8.0f} {agree:>6}  "
                      f"{ar['ms'] / r['ms']:>17.2f}")
    print("\nencoder included (nar gen = encoder + one pass), against the fastest AR runtime of each cell:")
    print(f"{'N':>4} {'batch':>5} {'one-pass path':14} {'nar gen ms':>10} {'fastest AR':>17} {'AR ms':>9} "
          f"{'AR / nar gen':>12}")
    for (n, b), (ar, _) in summary.items():
        for r in rows:
            if r["kind"] == "one-pass" and r["n"] == n and r["batch"] == b:
                print(f"{n:>4} {b:>5} {r['name']:14} {r['gen_ms']:>10.1f} {ar['name']:>17} {ar['ms']:>9.1f} "
                      f"{ar['ms'] / r['gen_ms']:>12.2f}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "fitted_agreement": agreement}, indent=2))
    key = (64, 1) if (64, 1) in summary else next(iter(summary))
    ar, one = summary[key]
    print(f"\nfastest_ar: {ar['name']}")
    print(f"fastest one-pass path reproducing torch fp32: {one['name']} (N={key[0]}, batch {key[1]})")
    print(f"ratio: {ar['ms'] / one['ms']:.2f}")


if __name__ == "__main__":
    main()
