"""Translation (encoder-decoder) benchmark: tinybert's ``Translator`` and its peers side by side, one run.

    python -m bench.translate [--quick] [--smoke] [--rounds N] [--threads 2] [--models t5,marian] [--engines ...]
                              [--reconvert] [--out FILE]

Models (random weights, seeded, built once into ~/.cache/tinybert-bench/<name>/hf with ``save_pretrained``;
``TINYBERT_BENCH_CACHE`` moves the cache): "t5" has T5-small's shape (6+6 layers, d_model 512, d_ff 2048,
8 heads, d_kv 64, relu, vocab 32128, tied embeddings); "marian" has an opus-mt Marian shape (6+6 layers,
d_model 512, 8 heads, ffn 2048, swish, vocab 58101 whose last id is <pad>, shared and tied embeddings,
sinusoidal positions, no forced EOS). Their tokenizer is a WordLevel ``tokenizer.json`` with one token
string per id ("w<id>", plus the family's <pad> / </s> / <unk> at their usual ids), so that CTranslate2's
converter gets a vocabulary matching the model id for id (and its unk_token).

Workloads: 64 source tokens -> 64 new tokens, greedy and beam 4, at batch 1 and batch 16 (16 different
sources, all 64 tokens long, so nobody pads). Sources are ids drawn with a fixed seed outside the special
ids (T5: 3..31999, below the sentinel range; Marian: 2..58099), no EOS appended; every engine gets the very
same ids (CTranslate2 as token strings, checked to map back to the same ids through its vocabulary).
Random weights would stop early on EOS, so every engine is told to emit exactly N new tokens:
  - tinybert (int8 / fp32): ``Translator.translate_ids(ids, beam_size=B, max_length=N, min_length=N,
    length_penalty=1.0, early_stopping=False)``; lengths count new tokens; "token_ids" has no start token.
  - PyTorch fp32 and dynamic int8 (``quantize_dynamic({nn.Linear}, qint8)``: every projection and the LM
    head): ``generate(max_new_tokens=N, min_new_tokens=N, num_beams=B, do_sample=False, early_stopping=False,
    length_penalty=1.0)``; the output's first column is the decoder start token and is dropped. On Marian,
    ``suppress_tokens=[<pad>]`` as opus-mt's own ``bad_words_ids`` does (CTranslate2 drops <pad> from
    Marian's vocabulary, so it can never emit it either).
  - CTranslate2 int8 / fp32 (compute_type int8 / float32; ``Translator.translate_batch(beam_size=B,
    min_decoding_length=N, max_decoding_length=N, length_penalty=1.0)``, one batch): in CTranslate2's search
    loop step 0 emits the first new token, EOS is disabled while step < min_decoding_length and the loop stops after
    max_decoding_length steps; the decoder start token is not in the result. So min = max = N is N new
    tokens and no EOS, the same count as the others.
The worker checks every result: batch sequences, each exactly N tokens, none of them EOS.

Figures per engine and workload, medians over repeats with a warm-up call excluded: tokens/s = batch x N /
wall time of the whole call (encoder included); time to first token (TTFT) = wall time of the same call with
1 new token (min = max = 1: the encoder over the 64 source tokens + the first decoder step); per-sequence
decode speed (N - 1) / (total - TTFT) in the JSON. Also: load time, file size, peak RSS (VmHWM of the
engine's own process over all its workloads, i.e. mostly beam 4 x batch 16), and agreement with PyTorch fp32
(number of leading identical tokens at batch 1; these random models degenerate into repeating one token, which
every engine tends to find, so agreement is a loose sanity check; the cost of a step does not depend on it).
Every tinybert figure is printed with its ratio to the best peer of its precision in the same run; the
target line checks tinybert int8 >= 1.4x CTranslate2 int8 tokens/s on every row.

``--quick``: t5 only (unless --models), batch 1 only, 16 new tokens, 2 + 1 repeats: a smoke run, not figures
to quote. ``--smoke``: the same with 4 new tokens and one timed call each (results in bench/results/scratch/).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import CACHE

ENGINES = ["tinybert-int8", "tinybert-fp32", "pytorch-int8", "pytorch-fp32", "ctranslate2-int8", "ctranslate2-fp32"]
MODELS = ["t5", "marian"]
REFERENCE = "pytorch-fp32"
SEED = 0
SOURCE_LEN = 64
NEW_TOKENS = 64
QUICK_NEW_TOKENS = 16
SMOKE_NEW_TOKENS = 4
BATCHES = (1, 16)
BEAMS = (1, 4)
N_SOURCES = max(BATCHES)
# (TTFT repeats, total-generation repeats); each median also has one warm-up call before it.
REPEATS = {"full": (5, 3), "quick": (2, 1), "smoke": (1, 1)}
TARGET = 1.4  # tinybert int8 tokens/s over CTranslate2 int8's, on every row

SHAPES = {
    "t5": "T5-small shape: 6+6 layers, d_model 512, d_ff 2048 (relu), 8 heads, d_kv 64, vocab 32128, tied",
    "marian": "Marian (opus-mt) shape: 6+6 layers, d_model 512, ffn 2048 (swish), 8 heads, vocab 58101, tied",
}
# Family conventions: special token strings at their usual ids, and the range random source ids come from.
SPECIALS = {"t5": {0: "<pad>", 1: "</s>", 2: "<unk>"},
            "marian": {0: "</s>", 1: "<unk>", 58100: "<pad>"}}
SOURCE_RANGE = {"t5": (3, 32000), "marian": (2, 58100)}


def _workload(beam: int, batch: int) -> str:
    return f"{'greedy' if beam == 1 else f'beam{beam}'} b{batch}"


# ----------------------------------------------------------------------------- preparation (parent)

def _hf_model(model: str):
    import torch
    from transformers import MarianConfig, MarianMTModel, T5Config, T5ForConditionalGeneration

    torch.manual_seed(SEED)
    if model == "t5":
        config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                          num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                          feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0)
        return T5ForConditionalGeneration(config).eval()
    # transformers' MarianConfig defaults to forced_eos_token_id=0, which would force EOS as the last token.
    config = MarianConfig(vocab_size=58101, decoder_vocab_size=58101, d_model=512, encoder_layers=6,
                          decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
                          encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
                          activation_function="swish", scale_embedding=True, share_encoder_decoder_embeddings=True,
                          tie_word_embeddings=True, pad_token_id=58100, eos_token_id=0,
                          decoder_start_token_id=58100, forced_eos_token_id=None)
    return MarianMTModel(config).eval()


def _write_tokenizer(model: str, vocab_size: int, target: Path) -> None:
    """A WordLevel tokenizer with exactly one token string per model id ("w<id>" and the family's specials)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = SPECIALS[model]
    names = [specials.get(i, f"w{i}") for i in range(vocab_size)]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
    if tok.get_vocab_size() != vocab_size or any(tok.token_to_id(t) != i for i, t in specials.items()):
        raise RuntimeError("the tokenizer's ids do not run 0..vocab_size-1 with the specials in place")
    tok.save(str(target / "tokenizer.json"))
    # CTranslate2's converter reads pad (T5's decoder start), eos and unk from the tokenizer (unk must be set).
    (target / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 512, "clean_up_tokenization_spaces": False}, indent=2))


def hf_folder(model: str) -> Path:
    """The seeded random HF folder of ``model`` (built once): weights, tokenizer, bench.json."""
    def build(folder: Path) -> None:
        net = _hf_model(model)
        net.save_pretrained(folder)
        _write_tokenizer(model, net.config.vocab_size, folder)
        (folder / "bench.json").write_text(json.dumps({"parameters": net.num_parameters(), "seed": SEED}))
    return harness.built_once(CACHE / model / "hf", build, lambda f: (f / "bench.json").is_file())


def _check_ct2_vocabulary(path: Path, folder: Path) -> None:
    # Marian: CTranslate2 drops the final <pad>, since its decoder starts from a zero embedding.
    harness.check_ct2_vocabulary(path, folder, may_drop_last=True)


def prepare(model: str, engine: str, reconvert: bool = False) -> Path:
    """Build (once, cached) what ``engine`` loads for ``model``; returns its path. ``reconvert``: convert
    tinybert's files again even when a file of the current format version is cached."""
    return harness.engine_files(hf_folder(model), CACHE / model, engine, _check_ct2_vocabulary, reconvert)


def sources(model: str) -> dict:
    """N_SOURCES inputs of SOURCE_LEN non-special ids, their token strings, and the EOS id."""
    from tokenizers import Tokenizer

    folder = hf_folder(model)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    low, high = SOURCE_RANGE[model]
    rng = np.random.default_rng(SEED)
    ids = rng.integers(low, high, size=(N_SOURCES, SOURCE_LEN)).tolist()
    tokens = [[tok.id_to_token(i) for i in row] for row in ids]
    if [[tok.token_to_id(t) for t in row] for row in tokens] != ids:
        raise RuntimeError("source ids do not survive the id -> token string -> id round trip")
    eos = json.loads((folder / "config.json").read_text())["eos_token_id"]
    return {"ids": ids, "tokens": tokens, "eos_id": eos}


# ----------------------------------------------------------------------------- engines (worker)

def load_engine(engine: str, path: Path, threads: int):
    """Returns (run, to_ids): run(sources, new tokens, beam size) is the timed call (sources are what the engine
    takes, see harness.engine_inputs); to_ids(its output) -> the new ids of each source, outside the timed region."""
    kind, precision = harness.kind_precision(engine)
    if kind == "tinybert":
        from tinybert import Translator

        tr = Translator(path, threads=threads)

        def run(rows: list[list[int]], n: int, beam: int) -> object:
            return tr.translate_ids(rows, beam_size=beam, max_length=n, min_length=n, length_penalty=1.0,
                                    early_stopping=False)

        def to_ids(out: list[dict]) -> list[list[int]]:
            return [[int(i) for i in r["token_ids"]] for r in out]
        return run, to_ids
    if kind == "ctranslate2":
        import ctranslate2

        tr = ctranslate2.Translator(str(path), device="cpu", compute_type="int8" if precision == "int8" else "float32",
                                    intra_threads=threads, inter_threads=1)
        vocab = {t: i for i, t in enumerate(harness.ct2_vocabulary(path))}

        def run(rows: list[list[str]], n: int, beam: int) -> object:
            # Step 0 emits the first new token; EOS is disabled while step < min_decoding_length; the search
            # stops after max_decoding_length steps: min = max = n gives n new tokens, none of them EOS.
            return tr.translate_batch(rows, beam_size=beam, min_decoding_length=n, max_decoding_length=n,
                                      length_penalty=1.0, num_hypotheses=1, max_batch_size=0)

        def to_ids(out: list) -> list[list[int]]:
            return [[vocab[t] for t in r.hypotheses[0]] for r in out]
        return run, to_ids
    import torch
    from transformers import AutoModelForSeq2SeqLM

    net = harness.torch_model(lambda: AutoModelForSeq2SeqLM.from_pretrained(str(path), dtype=torch.float32),
                              precision, threads)
    start = net.generation_config.decoder_start_token_id
    extra = {}
    if net.config.model_type == "marian":
        extra["suppress_tokens"] = [net.config.pad_token_id]  # opus-mt's bad_words_ids; CTranslate2 cannot emit it

    def run(rows: torch.Tensor, n: int, beam: int) -> object:
        with torch.inference_mode():
            return net.generate(input_ids=rows, attention_mask=torch.ones_like(rows), max_new_tokens=n,
                                min_new_tokens=n, num_beams=beam, num_return_sequences=1, do_sample=False,
                                early_stopping=False, length_penalty=1.0, **extra)

    def to_ids(out: torch.Tensor) -> list[list[int]]:
        if not bool((out[:, 0] == start).all()):
            raise SystemExit(f"{engine}: output does not start with the decoder start token {start}")
        return out[:, 1:].tolist()
    return run, to_ids


def _check_output(engine: str, ids: list[list[int]], batch: int, n: int, eos: int) -> None:
    lengths = sorted({len(r) for r in ids})
    if len(ids) != batch or lengths != [n]:
        raise SystemExit(f"{engine} returned {len(ids)} sequences of lengths {lengths}, expected {batch} of {n}")
    if any(eos in r for r in ids):
        raise SystemExit(f"{engine} emitted EOS ({eos}) although min length = max length = {n}")


def worker(spec: dict) -> dict:
    engine = spec["engine"]
    t0 = time.perf_counter()
    run, to_ids = load_engine(engine, Path(spec["path"]), spec["threads"])
    result: dict = {"load_s": time.perf_counter() - t0, "workloads": {}}
    n, eos = spec["new_tokens"], spec["sources"]["eos_id"]
    ttft_repeats, total_repeats = REPEATS["smoke" if spec["smoke"] else "quick" if spec["quick"] else "full"]
    for beam in spec["beams"]:
        for batch in spec["batches"]:
            rows = harness.engine_inputs(engine, spec["sources"], batch)
            fig = harness.time_generation(lambda k, rows=rows, beam=beam: run(rows, k, beam), n, ttft_repeats,
                                          total_repeats)
            _check_output(engine, to_ids(fig.pop("first")), batch, 1, eos)
            ids = to_ids(fig.pop("full"))
            _check_output(engine, ids, batch, n, eos)
            fig.update(beam=beam, batch=batch, tok_s=batch * n / fig["total_s"], generated_tokens=batch * n)
            if batch == 1:
                fig["ids"] = ids
            result["workloads"][_workload(beam, batch)] = fig
    return result


# ----------------------------------------------------------------------------- analysis (parent)

def analyse(results: dict) -> dict:
    """Agreement with the reference, tinybert's ratios to the best peer of its precision and to CTranslate2
    int8 (the target); drops the token ids (batch 1 keeps its first 16 to eyeball)."""
    ref = {w: fig["ids"] for w, fig in results.get(REFERENCE, {}).get("workloads", {}).items() if "ids" in fig}
    for res in results.values():
        for w, fig in res.get("workloads", {}).items():
            ids = fig.pop("ids", None)
            if ids is None:
                continue
            if w in ref:
                fig["agreement_leading"] = [harness.leading_match(a, b) for a, b in zip(ids, ref[w])]
            fig["first_ids"] = ids[0][:16]
    ratios: dict = {}
    for mine in ("tinybert-int8", "tinybert-fp32"):
        precision = harness.kind_precision(mine)[1]
        for w, fig in results.get(mine, {}).get("workloads", {}).items():
            figs = {e: r["workloads"][w] for e, r in results.items() if w in r.get("workloads", {})}
            entry: dict = {}
            for key, name, higher in (("tok_s", "tok_s", True), ("ttft_ms", "ttft", False)):
                best = harness.best_peer({e: f[key] for e, f in figs.items()}, mine, higher)
                if best:  # > 1: tinybert faster (TTFT: the peer's time over tinybert's)
                    entry[name] = {"peer": best[0], "ratio": best[1]}
            ct2 = f"ctranslate2-{precision}"
            if ct2 in figs:
                entry[f"tok_s_vs_{ct2}"] = fig["tok_s"] / figs[ct2]["tok_s"]
            ratios.setdefault(mine, {})[w] = entry
    return ratios


def target_check(results: dict, workloads: list[str]) -> dict:
    """tinybert int8 >= TARGET x CTranslate2 int8 tokens/s on every row (None where either is missing)."""
    rows = {}
    for w in workloads:
        mine = results.get("tinybert-int8", {}).get("workloads", {}).get(w)
        peer = results.get("ctranslate2-int8", {}).get("workloads", {}).get(w)
        rows[w] = mine["tok_s"] / peer["tok_s"] if mine and peer else None
    measured = [r for r in rows.values() if r is not None]
    return {"target": TARGET, "ratios": rows, "rows_met": sum(r >= TARGET for r in measured),
            "rows_measured": len(measured), "met": len(measured) == len(rows) and all(r >= TARGET for r in measured)}


def _ratio_cell(entry: dict | None, key: str) -> str:
    if not entry or key not in entry:
        return "-"
    return f"{entry[key]['ratio']:.2f}x {entry[key]['peer']}"


def print_model(model: str, info: dict) -> None:
    results, workloads = info["engines"], info["workloads"]
    engines = list(results)
    print(f"\n{model}: {SHAPES[model]}; {info['parameters'] / 1e6:.1f}M parameters, random weights")
    print(f"{info['source_len']} source tokens -> {info['new_tokens']} new tokens (forced, no EOS); "
          f"{info['threads']} threads; medians (warm-up excluded)")
    for title, key, ratio_key in (
            ("tokens/s (batch x new tokens / wall time of the call)", "tok_s", "tok_s"),
            ("time to first token, ms (same call with 1 new token: encoder + first decoder step)", "ttft_ms", "ttft")):
        print(f"\n{title}")
        rows = []
        for w in workloads:
            row = [w]
            for e in engines:
                fig = results[e].get("workloads", {}).get(w)
                row.append(f"{fig[key]:.1f}" if fig else "error" if "error" in results[e] else "-")
            r = info["ratios"]
            row += [_ratio_cell(r.get("tinybert-int8", {}).get(w), ratio_key),
                    _ratio_cell(r.get("tinybert-fp32", {}).get(w), ratio_key)]
            rows.append(row)
        print(harness.table(["workload"] + engines + ["tinybert-int8 / best int8 peer",
                                                      "tinybert-fp32 / best fp32 peer"], rows))
    print("ratios > 1: tinybert faster (tokens/s: tinybert over the peer; TTFT: the peer's time over tinybert's)")
    rows = []
    n = info["new_tokens"]
    for engine, res in results.items():
        if "error" in res:
            continue
        row = [engine, f"{res['load_s']:.2f}", f"{res['file_mb']:.1f}", f"{res['peak_rss_mb']:.0f}"]
        for b in info["beams"]:
            agree = res["workloads"].get(_workload(b, 1), {}).get("agreement_leading")
            row.append(f"{agree[0]}/{n}" if agree else "-")
        rows.append(row)
    print()
    print(harness.table(["engine", "load s", "MB", "RSS MB"] + [f"agree {_workload(b, 1)}" for b in info["beams"]],
                        rows))
    for engine, res in results.items():
        if "error" in res:
            print(f"{engine}: error: {res['error']}")
    print(f"MB = file (PyTorch: the fp32 HF folder); RSS = peak VmHWM of the engine's process over all workloads; "
          f"agree = leading tokens identical to {REFERENCE}'s")
    print("pytorch-int8 = torch quantize_dynamic({nn.Linear}, qint8): every projection and the LM head int8 "
          "(per-tensor weight scales), activations quantized per call")
    t = info["target"]
    cells = ", ".join(f"{w} {r:.2f}x" if r is not None else f"{w} -" for w, r in t["ratios"].items())
    if not t["rows_measured"]:
        verdict = "not measured"
    else:
        verdict = "met" if t["met"] else f"not met ({t['rows_met']}/{len(t['ratios'])} rows)"
    print(f"target tinybert-int8 >= {TARGET}x ctranslate2-int8 tokens/s on every row: {verdict}; {cells}")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"t5 only (unless --models), batch 1 only, {QUICK_NEW_TOKENS} new tokens, fewer "
                             "repeats: a smoke run, not figures to quote")
    parser.add_argument("--models", default=None, help="comma-separated: t5,marian (default both; --quick: t5)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    parser.add_argument("--reconvert", action="store_true",
                        help="convert the tinybert files again even if cached ones have the current format version "
                             "(after a converter change)")
    args = parser.parse_args(argv)
    if args.worker:
        harness.serve(args.worker, worker)
        return
    engines = [e for e in args.engines.split(",") if e]
    quick = args.quick or args.smoke
    models = [m for m in (args.models or ("t5" if quick else ",".join(MODELS))).split(",") if m]
    for names, known in ((engines, ENGINES), (models, MODELS)):
        if set(names) - set(known):
            parser.error(f"unknown {sorted(set(names) - set(known))}; choose from {known}")
    batches = [1] if quick else list(BATCHES)
    beams = list(BEAMS)
    workloads = [_workload(b, n) for b in beams for n in batches]
    new_tokens = SMOKE_NEW_TOKENS if args.smoke else QUICK_NEW_TOKENS if args.quick else NEW_TOKENS
    session = harness.Session("translate", args)
    report: dict = {"source_len": SOURCE_LEN, "new_tokens": new_tokens, "batches": batches, "beams": beams,
                    "target": TARGET, "seed": SEED,
                    "repeats": dict(zip(("ttft", "total"), REPEATS["smoke" if args.smoke else
                                                                    "quick" if args.quick else "full"])),
                    "models": {}}
    for model in models:
        print(f"\n== {model}: preparing (cached after the first run)", flush=True)
        paths: dict[str, Path] = {}
        specs: dict[str, dict] = {}
        model_sources = sources(model)
        for engine in engines:
            try:
                paths[engine] = prepare(model, engine, reconvert=args.reconvert)
            except Exception as exc:  # e.g. a converter that does not know the family yet: the rest still runs
                specs[engine] = {"error": f"preparing failed: {type(exc).__name__}: {exc}"}
                continue
            specs[engine] = {"path": str(paths[engine]), "new_tokens": new_tokens, "batches": batches,
                             "beams": beams, "sources": model_sources}
        results = session.rounds(engines, specs, tag=model)
        for engine, res in results.items():
            if "error" not in res:
                res["file_mb"] = harness.file_size(paths[engine]) / 1e6
        params = json.loads((hf_folder(model) / "bench.json").read_text())["parameters"]
        info = {"shape": SHAPES[model], "parameters": params, "threads": args.threads, "source_len": SOURCE_LEN,
                "new_tokens": new_tokens, "batches": batches, "beams": beams, "workloads": workloads,
                "engines": results}
        info["ratios"] = analyse(results)
        info["target"] = target_check(results, workloads)
        report["models"][model] = info
        print_model(model, info)
    session.write(report)


if __name__ == "__main__":
    main()
