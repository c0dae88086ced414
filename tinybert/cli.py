"""The `tinybert` command. Subcommands map one-to-one onto the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .errors import InputError, TinyBertError


def _cmd_convert(args: argparse.Namespace) -> None:
    from tinybert_convert import convert

    out = convert(args.src, args.out, dtype=args.dtype, show_progress=not args.quiet, task=args.task,
                  mixed_activations=not args.act12, force=args.force)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.dtype})", file=sys.stderr)


def _read_texts(args: argparse.Namespace) -> list[str]:
    if args.texts:
        return list(args.texts)
    name = args.file or "standard input"
    raw = Path(args.file).read_bytes() if args.file else sys.stdin.buffer.read()
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text ({exc})") from None
    return [line for line in source.splitlines() if line.strip()]


def _ensure_kernels() -> None:
    """Compile the kernels with a visible progress bar rather than stall silently on a first run."""
    from .api.warmup import kernels_ready, warmup

    if not kernels_ready():
        print("tinybert: compiling kernels for this machine (first run only)", file=sys.stderr)
        warmup(show_progress=True)


def _cmd_warmup(args: argparse.Namespace) -> None:
    from .api.warmup import warmup

    warmup(show_progress=not args.quiet)


def _cmd_embed(args: argparse.Namespace) -> None:
    from .api.encoder import Encoder

    _ensure_kernels()
    encoder = Encoder(args.model, threads=args.threads)
    texts = _read_texts(args)
    if not texts:       # Encoder.encode returns [0, dim] for no texts; a command given none is a mistake
        raise InputError("texts is empty: no text to embed")
    vectors = encoder.encode(texts, batch_size=args.batch_size, show_progress=args.progress)
    if args.output and args.output.endswith(".npy"):
        np.save(args.output, vectors)
        print(f"wrote {args.output} {vectors.shape}", file=sys.stderr)
        return
    sink = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for text, vector in zip(texts, vectors):
            sink.write(json.dumps({"text": text, "embedding": [round(float(v), 7) for v in vector]}) + "\n")
    finally:
        if sink is not sys.stdout:
            sink.close()


def _cmd_embed_corpus(args: argparse.Namespace) -> None:
    from .distributed import embed_corpus

    _ensure_kernels()   # once here, not once per local worker
    concurrency = args.workers
    if args.max_workers is not None:
        concurrency = (args.workers or 1, args.max_workers)
    rows = embed_corpus(args.model, args.input, args.output, address=args.address, text_column=args.text_column,
                        output_column=args.output_column, batch_size=args.batch_size, concurrency=concurrency,
                        threads_per_worker=args.threads_per_worker, model_transport=args.model_transport,
                        show_progress=not args.quiet)
    print(f"wrote {args.output} ({rows} rows)", file=sys.stderr)


def _json_lines(records: list[dict]) -> None:
    for record in records:
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


def _cmd_classify(args: argparse.Namespace) -> None:
    from .api.tasks import Classifier

    _ensure_kernels()
    clf = Classifier(args.model, threads=args.threads)
    texts, pairs = _read_texts(args), None
    if args.pairs:
        split = [t.split("\t") for t in texts]
        if any(len(parts) != 2 for parts in split):
            raise InputError("--pairs expects each text as 'first<TAB>second'")
        texts, pairs = [a for a, _ in split], [b for _, b in split]
    top_k = None if args.top_k == 0 else args.top_k
    results = clf.classify(texts, text_pair=pairs, top_k=top_k, batch_size=args.batch_size)
    _json_lines([{"text": t, **({"text_pair": pairs[i]} if pairs else {}), "labels": r}
                 for i, (t, r) in enumerate(zip(texts, results))])


def _cmd_ner(args: argparse.Namespace) -> None:
    from .api.tasks import TokenClassifier

    _ensure_kernels()
    model = TokenClassifier(args.model, threads=args.threads)
    texts = _read_texts(args)
    results = model.ner(texts, aggregation=args.aggregation, stride=args.stride, batch_size=args.batch_size)
    _json_lines([{"text": t, "entities": r} for t, r in zip(texts, results)])


def _cmd_fill_mask(args: argparse.Namespace) -> None:
    from .api.tasks import FillMask

    _ensure_kernels()
    model = FillMask(args.model, threads=args.threads)
    texts = _read_texts(args)
    results = model.fill(texts, top_k=args.top_k, batch_size=args.batch_size)
    _json_lines([{"text": t, "predictions": r} for t, r in zip(texts, results)])


def _cmd_qa(args: argparse.Namespace) -> None:
    from .api.tasks import QuestionAnswerer

    if (args.context is None) == (args.context_file is None):
        raise InputError("give the context with exactly one of --context TEXT or --context-file FILE")
    context = args.context
    if args.context_file:
        try:
            context = Path(args.context_file).read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{args.context_file} is not UTF-8 text ({exc})") from None
    _ensure_kernels()
    model = QuestionAnswerer(args.model, threads=args.threads)
    questions = _read_texts(args)
    results = model.answer(questions, [context] * len(questions), top_k=args.top_k,
                           max_answer_len=args.max_answer_len)
    _json_lines([{"question": q, "answer": r} for q, r in zip(questions, results)])


def _cmd_generate(args: argparse.Namespace) -> None:
    from .api.generator import Generator

    _ensure_kernels()
    gen = Generator(args.model, threads=args.threads)
    prompts = _read_texts(args)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop or None,
                   seed=args.seed)
    if args.stream:
        for i, prompt in enumerate(prompts):
            if i:
                sys.stdout.write("\n")
            for piece in gen.stream(prompt, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
        return
    for start in range(0, len(prompts), max(args.batch_size, 1)):
        chunk = prompts[start:start + max(args.batch_size, 1)]
        results = gen.generate(chunk, return_ids=True, **options)
        if args.json:
            _json_lines([{"prompt": p, **r} for p, r in zip(chunk, results)])
        else:
            for r in results:
                sys.stdout.write(r["text"] + "\n")
        sys.stdout.flush()


def _cmd_translate(args: argparse.Namespace) -> None:
    from .api.translator import Translator

    _ensure_kernels()
    model = Translator(args.model, threads=args.threads)
    texts = _read_texts(args)
    run = model.summarize if args.command == "summarize" else model.translate
    options = {name: getattr(args, name) for name in (
        "beam_size", "max_length", "min_length", "length_penalty", "no_repeat_ngram_size", "num_hypotheses",
        "repetition_penalty", "temperature", "top_k", "top_p", "seed", "batch_size") if getattr(args, name) is not None}
    if args.truncation is not None:
        options["truncation"] = args.truncation
    # A file gets a progress bar (on stderr) unless --quiet; results are written in input order.
    progress = bool(args.file) and not args.quiet
    results = run(texts, return_ids=True, show_progress=progress, **options)
    for text, result in zip(texts, results):
        hyps = result if isinstance(result, list) else [result]
        if args.json:
            _json_lines([{"source": text, "hypotheses": hyps}] if len(hyps) > 1 else [{"source": text, **hyps[0]}])
        else:
            sys.stdout.write("\t".join(h["text"].replace("\n", " ") for h in hyps) + "\n")
    sys.stdout.flush()


def _cmd_build_capi(args: argparse.Namespace) -> None:
    try:
        from tinybert_capi.build import build
    except ImportError as exc:
        raise InputError(f"the C API sources are not installed ({exc})") from None
    try:
        paths = build(args.outdir, verbose=args.verbose, python_home=args.python_home,
                      sitedirs=None if args.sitedirs is None else args.sitedirs.split(os.pathsep),
                      paths=None if args.paths is None else args.paths.split(os.pathsep))
    except RuntimeError as exc:
        raise InputError(str(exc)) from None
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    print(f"link with: gcc prog.c -I{paths['header'].parent} -L{paths['library'].parent} -ltinybert "
          f"-Wl,-rpath,{paths['library'].parent}", file=sys.stderr)


def _source(text: str) -> object:
    # Free-form by the format's definition; the converter writes JSON.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _cmd_info(args: argparse.Namespace) -> None:
    from . import format as fmt
    from .loader import load

    model = load(args.model)
    cfg = model.config
    # Quantisation companions (.scale, .smooth) are not parameters of the model.
    params = sum(int(np.prod(model.tensors.shape(name))) for name in model.tensors
                 if not name.endswith((fmt.SCALE_SUFFIX, fmt.SMOOTH_SUFFIX)))
    info = {
        "path": str(model.path),
        "file_bytes": model.path.stat().st_size,
        "format_version": model.metadata["format_version"],
        "quantization": model.quantization,
        "parameters": params,
        "config": cfg.to_dict(),
        "pooling": model.pooling,
        "task": model.task.to_dict(),
        "source": _source(model.metadata.get("source", "")),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{model.path}  ({info['file_bytes'] / 1e6:.1f} MB, format v{info['format_version']})")
    if cfg.kind == "decoder":
        print(f"  architecture  {cfg.architecture} decoder, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
              f"{cfg.num_heads} heads ({cfg.num_kv_heads} key/value), intermediate {cfg.intermediate_size}, "
              f"{cfg.norm}, {cfg.activation}{' gated' if cfg.gated_mlp else ''}, {cfg.positions} positions")
        print(f"  vocabulary    {cfg.vocab_size} tokens, context {cfg.max_positions}")
        print(f"  weights       {params / 1e6:.1f} M parameters, {model.quantization}")
        print(f"  task          text-generation (eos {list(cfg.eos_token_ids)})")
        print(f"  source        {info['source']}")
        return
    if cfg.kind == "encoder-decoder":
        print(f"  architecture  {cfg.family} encoder-decoder, {cfg.num_encoder_layers}+{cfg.num_decoder_layers} "
              f"layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, intermediate {cfg.intermediate_size}, "
              f"{cfg.norm}, {cfg.activation}{' gated' if cfg.gated_mlp else ''}, {cfg.positions} positions")
        print(f"  vocabulary    {cfg.vocab_size} tokens (decoder {cfg.decoder_vocab_size}), max length "
              f"{cfg.max_positions}{', own target tokenizer' if model.target_tokenizer_json else ''}")
        print(f"  weights       {params / 1e6:.1f} M parameters, {model.quantization}")
        print(f"  task          text2text-generation (decoder start {cfg.decoder_start_token_id}, "
              f"eos {list(cfg.eos_token_ids)})")
        print(f"  source        {info['source']}")
        return
    print(f"  architecture  {cfg.architecture} encoder, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.num_heads} heads, intermediate {cfg.intermediate_size}, {cfg.activation}")
    print(f"  vocabulary    {cfg.vocab_size} tokens, max length {cfg.max_length}")
    print(f"  weights       {params / 1e6:.1f} M parameters, {model.quantization}")
    print(f"  pooling       {model.pooling['mode']}{' + L2 normalize' if model.pooling['normalize'] else ''}")
    task = model.task
    labels = f" ({len(task.labels)} labels: {', '.join(task.labels[:8])}{' ...' if len(task.labels) > 8 else ''})" \
        if task.labels else ""
    print(f"  task          {task.type}{labels}")
    print(f"  source        {info['source']}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run

    _ensure_kernels()
    run(model=args.model, top_k=args.top_k)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinybert",
                                     description="CPU Transformer inference with one-file int8 models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a Hugging Face model folder to one tinybert file")
    p.add_argument("src", help="Hugging Face model folder (config.json, tokenizer.json, weights)")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--dtype", choices=["int8", "fp32"], default="int8", help="weight type (default int8)")
    p.add_argument("--task", choices=["feature-extraction", "sequence-classification", "token-classification",
                                      "question-answering", "masked-lm", "pretraining", "text-generation",
                                      "text2text-generation"],
                   help="head to convert (default: what config.json's architectures names)")
    p.add_argument("--act12", action="store_true",
                   help="int8: 12-bit inputs in every layer (default: 8-bit inputs where calibration "
                        "shows they keep the accuracy, which is faster on AVX-512 VNNI)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (never a file of SRC)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("embed", help="embed texts (arguments, --file, or stdin lines)")
    p.add_argument("model", help="tinybert model file")
    p.add_argument("texts", nargs="*", help="texts to embed; if none, read --file or stdin (one per line)")
    p.add_argument("--file", help="read texts from this file, one per line")
    p.add_argument("--output", "-o",
                   help="write .npy (by extension) or JSON lines here (default: JSON lines on stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("embed-corpus", help="embed a Parquet or JSON-lines corpus on Ray (local, or a cluster)")
    p.add_argument("model", help="tinybert model file")
    p.add_argument("input", help="corpus: .parquet, or .jsonl / .json (JSON lines), one row per text")
    p.add_argument("output", help="same formats; every input column kept, the embedding added, rows in input order")
    p.add_argument("--address", help="Ray cluster to run on (e.g. auto, ray://head:10001; default: a local instance)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--output-column", default="embedding")
    p.add_argument("--batch-size", type=int, default=256, help="rows per batch sent to a worker")
    p.add_argument("--workers", type=int, default=None,
                   help="worker actors (default: as many as the cluster's CPUs allow); with --max-workers, the minimum")
    p.add_argument("--max-workers", type=int, default=None, help="let Ray scale the workers from --workers up to this")
    p.add_argument("--threads-per-worker", type=int, default=1, help="CPUs (Numba threads) per worker")
    p.add_argument("--model-transport", choices=["auto", "path", "object-store"], default="auto",
                   help="how workers get the model: its path (shared storage) or Ray's object store "
                        "(default: path on one machine, object store on a cluster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_embed_corpus)

    def text_command(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text + " (texts as arguments, --file, or stdin lines; JSON lines out)")
        p.add_argument("model", help="tinybert model file")
        p.add_argument("texts", nargs="*", help="texts; if none, read --file or stdin (one per line)")
        p.add_argument("--file", help="read texts from this file, one per line")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--threads", type=int, default=None)
        p.set_defaults(func=func)
        return p

    p = text_command("classify", "classify texts", _cmd_classify)
    p.add_argument("--top-k", type=int, default=1, help="labels per text (0: all)")
    p.add_argument("--pairs", action="store_true", help="each text is 'first<TAB>second' (sentence pairs)")
    p = text_command("ner", "named entities / token classification", _cmd_ner)
    p.add_argument("--aggregation", default="simple", choices=["none", "simple", "first", "average", "max"])
    p.add_argument("--stride", type=int, default=None, help="split long texts into windows sharing this many tokens")
    p = text_command("fill-mask", "predict the mask token", _cmd_fill_mask)
    p.add_argument("--top-k", type=int, default=5)
    p = text_command("qa", "answer questions from a context", _cmd_qa)
    p.add_argument("--context", help="the context text")
    p.add_argument("--context-file", help="read the context from this UTF-8 file")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--max-answer-len", type=int, default=30)

    p = text_command("generate", "continue prompts with a decoder (GPT-2, Llama)", _cmd_generate)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable); output ends where it starts")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true", help="JSON lines with token ids and finish reason")

    for name, help_text, defaults in (
            ("translate", "translate texts with an encoder-decoder (T5, BART, Marian); one line out per text",
             "beam 4, max 256 new tokens, length penalty 1"),
            ("summarize", "summarise texts with an encoder-decoder (BART, T5 with 'summarize: ')",
             "beam 4, max 142 new tokens, length penalty 2, no repeated trigram, long texts truncated")):
        p = text_command(name, help_text, _cmd_translate)
        p.description = f"Defaults: {defaults}. T5 wants its task prefix in the text."
        p.set_defaults(batch_size=None)
        p.add_argument("--beam-size", type=int, default=None, help="1 = greedy (or sampled with --temperature)")
        p.add_argument("--max-length", type=int, default=None, help="most new tokens per text (EOS included)")
        p.add_argument("--min-length", type=int, default=None, help="fewest new tokens before EOS may come")
        p.add_argument("--length-penalty", type=float, default=None)
        p.add_argument("--no-repeat-ngram-size", type=int, default=None)
        p.add_argument("--num-hypotheses", type=int, default=None, help="hypotheses per text (tab-separated)")
        p.add_argument("--repetition-penalty", type=float, default=None)
        p.add_argument("--temperature", type=float, default=None, help="> 0 samples (with --beam-size 1)")
        p.add_argument("--top-k", type=int, default=None)
        p.add_argument("--top-p", type=float, default=None)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--truncation", action=argparse.BooleanOptionalAction, default=None,
                       help="cut texts longer than the model takes (default: summarize yes, translate no)")
        p.add_argument("--json", action="store_true", help="JSON lines with token ids and finish reason")
        p.add_argument("--quiet", action="store_true", help="no progress bar for --file")

    p = sub.add_parser("build-capi", help="build the C library: libtinybert.so, tinybert.h, tinybert.pc")
    p.add_argument("outdir", help="folder to write them to")
    p.add_argument("--verbose", action="store_true", help="show the compiler commands")
    # What the library records about its Python is normally taken from this interpreter; these replace
    # it (the tests use them to build a library whose environment is missing).
    p.add_argument("--python-home", help=argparse.SUPPRESS)
    p.add_argument("--sitedirs", help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_build_capi)

    p = sub.add_parser("info", help="describe a tinybert model file")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="semantic search with the embedded all-MiniLM-L6-v2 (no download)")
    p.add_argument("--model", help="use this tinybert file instead of the default model")
    p.add_argument("--top-k", type=int, default=3)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("warmup", help="compile and cache the kernels now (otherwise the first call does it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_warmup)
    return parser


_TEXT_COMMANDS = ("embed", "classify", "ner", "fill-mask", "qa", "generate", "translate", "summarize")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `embed MODEL -o out.npy "text"`: argparse leaves texts that follow an option unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in _TEXT_COMMANDS or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.texts = list(args.texts) + extra
    try:
        args.func(args)
    except TinyBertError as exc:
        print(f"tinybert: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tinybert: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
