"""The `tinybert` command. Subcommands map one-to-one onto the Python API.

It behaves like a Unix filter: one output row per input line (a line it cannot process is an error that names
the line, never a silently dropped row), UTF-8 in and out whatever the locale, arguments, files and the model
checked before any kernel is compiled, and a reader that closes the pipe early (``| head``) ends it quietly with
status 141, what a shell reports for a C tool killed by SIGPIPE. Errors print ``tinybert: error: ...``, status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError, ModelKindError, TinyBertError

EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 141    # 128 + SIGPIPE: `set -o pipefail` scripts see what `yes | head` gives them

# embed --output: the format follows the extension; anything else is refused before any work
_VECTOR_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".npy": "npy", ".csv": "csv"}


# --------------------------------------------------------------------------- input lines

@dataclass
class Lines:
    """Input texts and where they came from, so that an error can name the line it is about."""

    texts: list[str]
    source: str = ""      # a file name or "standard input"; "" for texts given as arguments
    first: int = 1        # number of the first text argument (the second text of `similarity` is argument 2)

    def where(self, i: int) -> str:
        return f"line {i + 1} of {self.source}" if self.source else f"text argument {self.first + i}"

    def blanks(self) -> list[int]:
        return [i for i, text in enumerate(self.texts) if not text.strip()]


def _read_lines(path: str | None) -> Lines:
    """The lines of ``path`` (stdin when None), split on "\\n" only: a form feed or U+2028 inside a line does
    not start a new row, as it would with str.splitlines, so rows stay aligned with `wc -l`, `paste`, `nl`."""
    name = path or "standard input"
    if path is None and sys.stdin.isatty():
        print("tinybert: reading texts from standard input, one per line (end with Ctrl-D)", file=sys.stderr)
    raw = Path(path).read_bytes() if path else sys.stdin.buffer.read()
    try:
        source = raw.decode("utf-8-sig")   # a byte-order mark is not part of the first text
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"line {line} of {name} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                         "convert it, e.g. with iconv -t UTF-8") from None
    lines = source.split("\n")
    if lines[-1] == "":
        lines.pop()     # the newline that ends the last line does not start another
    if not lines:
        raise InputError(f"{name} is empty: give one text per line")
    return Lines([line[:-1] if line.endswith("\r") else line for line in lines], name)


def _utf8_argument(text: str) -> str | None:
    """A command-line text as UTF-8 whatever the locale: under LANG=C without UTF-8 mode Python decodes argv as
    ASCII, keeping the other bytes as surrogates; those bytes are UTF-8 text. None if they are not."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return os.fsencode(text).decode("utf-8")
        except UnicodeError:
            return None


def _argument_lines(texts: list[str], first: int = 1) -> Lines:
    lines = Lines([], "", first)
    for i, text in enumerate(texts):
        decoded = _utf8_argument(text)
        if decoded is None:
            raise InputError(f"{lines.where(i)} is not valid UTF-8 (undecodable bytes in the command line)")
        lines.texts.append(decoded)
    return lines


def _read_texts(args: argparse.Namespace) -> Lines:
    if args.texts and args.file:
        raise InputError("give texts as arguments or with --file, not both")
    if args.texts:
        return _argument_lines(args.texts)
    return _read_lines(args.file)


def _refuse_blanks(lines: Lines, command: str) -> None:
    for i in lines.blanks()[:1]:
        raise InputError(f"{lines.where(i)} is blank: `tinybert {command}` needs a text on every line "
                         "(each output row answers one input line); remove the line or put a text there")


_INDEXED = re.compile(r"\btexts\[(\d+)\]|^question (\d+)\b")


@contextmanager
def _naming_lines(lines: Lines) -> Iterator[None]:
    """Turn the API's ``texts[i]`` in an InputError into the input line (or argument) it is."""
    try:
        yield
    except InputError as exc:
        message = _INDEXED.sub(lambda m: lines.where(int(m.group(1) or m.group(2))), str(exc))
        raise InputError(message.replace("pass truncation=True", "pass --truncation")) from None


def _check_each(lines: Lines, check: Callable[[str], object], skip_blank: bool = False) -> None:
    """Run the API's own per-text check on every line (tokenizing only), so a bad line is reported with its
    number before anything is compiled or computed."""
    for i, text in enumerate(lines.texts):
        if skip_blank and not text.strip():
            continue
        try:
            check(text)
        except InputError as exc:
            raise InputError(f"{lines.where(i)}: {str(exc).replace('pass truncation=True', 'pass --truncation')}") \
                from None


# --------------------------------------------------------------------------- models and kernels

_NEEDS = {
    "embed": "an encoder", "similarity": "an encoder",
    "classify": "a sequence-classification head (a file converted from a *ForSequenceClassification checkpoint)",
    "rerank": "a sequence-classification head (a cross-encoder, converted from *ForSequenceClassification)",
    "ner": "a token-classification head (a file converted from a *ForTokenClassification checkpoint)",
    "fill-mask": "a masked-LM head (a file converted from a *ForMaskedLM checkpoint)",
    "qa": "a question-answering head (a file converted from a *ForQuestionAnswering checkpoint)",
    "generate": "a decoder (GPT-2, Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 3)",
    "chat": "a decoder with a chat template (an instruct or chat model)",
    "translate": "an encoder-decoder (T5, BART, Marian, NLLB, ...)",
    "summarize": "an encoder-decoder (T5, BART, Marian, ...)",
}
_COMMAND_FOR_TASK = {
    "feature-extraction": "embed` or `tinybert similarity", "sequence-classification": "classify` or `tinybert rerank",
    "token-classification": "ner", "question-answering": "qa", "masked-lm": "fill-mask", "pretraining": "fill-mask",
    "text-generation": "generate", "text2text-generation": "translate` or `tinybert summarize",
}


def _holds(task: str) -> str:
    if task == "text-generation":
        return "a decoder model (text generation)"
    if task == "text2text-generation":
        return "an encoder-decoder model (translation, summarisation)"
    if task == "feature-extraction":
        return "an encoder without a task head (sentence embeddings)"
    return f"an encoder with a {task} head"


def _open(cls: type, args: argparse.Namespace, command: str) -> object:
    """``cls(args.model, threads=args.threads)``; a file of another kind gets a message naming the subcommand
    that fits it rather than a Python class."""
    try:
        return cls(args.model, threads=args.threads, dtype=args.dtype, revision=args.revision)
    except ModelKindError as exc:
        from .api.resolve import resolve
        from .loader import load

        try:    # a Hub id or a folder: its converted file is in the cache by now
            task = load(resolve(args.model, args.dtype, args.revision)[0]).task.type
        except TinyBertError:
            raise exc from None
        raise ModelKindError(f"{args.model} holds {_holds(task)}; `tinybert {command}` needs {_NEEDS[command]}: "
                             f"use `tinybert {_COMMAND_FOR_TASK.get(task, 'info')}` for this file") from None


def _ensure_kernels() -> None:
    """Compile the kernels with a visible progress bar rather than stall silently on a first run. Called once
    the arguments, the model and the input have been checked: a mistake never waits for a compile."""
    from .api.warmup import kernels_ready, warmup

    if not kernels_ready():
        print("tinybert: compiling kernels for this machine (first run only)", file=sys.stderr)
        warmup(show_progress=True)


def _json_line(record: object, sink=None) -> None:
    # UTF-8 as is, but the line and paragraph separators escaped: str.splitlines (and JavaScript) break lines there.
    text = json.dumps(record, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    (sink or sys.stdout).write(text + "\n")


def _json_lines(records: list) -> None:
    for record in records:
        _json_line(record)


# --------------------------------------------------------------------------- commands

def _cmd_convert(args: argparse.Namespace) -> None:
    from tinybert_convert import convert

    # The converter checks the rest of the output path (folder, existing file, writable) before reading anything.
    if Path(args.out).suffix != ".safetensors" and not Path(args.out).is_dir():
        raise InputError(f"output {args.out} must end in .safetensors (the format tinybert writes)")
    from .api.resolve import hf_folder

    out = convert(hf_folder(args.src, args.revision), args.out, dtype=args.dtype, show_progress=not args.quiet,
                  int4_budget=args.int4_budget,
                  task=args.task, mixed_activations=not args.act12, force=args.force)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.dtype})", file=sys.stderr)


def _cmd_warmup(args: argparse.Namespace) -> None:
    from .api.warmup import warmup

    warmup(show_progress=not args.quiet)


def _output_format(path: str) -> str:
    """The format ``embed --output`` writes to ``path``, and a path it can write, or InputError before any work."""
    suffix = Path(path).suffix.lower()
    if suffix not in _VECTOR_FORMATS:
        raise InputError(f"cannot tell the output format of {path}: name it .jsonl or .json (JSON lines), "
                         ".npy (numpy float32 [rows, dim]) or .csv (one row of numbers per line)")
    out = Path(path)
    if out.is_dir():
        raise InputError(f"output {path} is a folder; name the file to write")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise InputError(f"cannot write {path}: permission denied")
    return _VECTOR_FORMATS[suffix]


def _embed_lines(encoder, lines: list[Lines], batch_size: int, progress: bool) -> list[np.ndarray]:
    """Each Lines' vectors, one row per line. A blank line is embedded as the (empty) text it is when the
    Encoder accepts that, as sentence-transformers does; else it is an error naming the line."""
    for part in lines:
        for i in part.blanks()[:1]:
            try:
                encoder.encode([part.texts[i]])
            except InputError:
                raise InputError(f"{part.where(i)} is blank and this model cannot embed an empty text; remove the "
                                 "line or put a text there (each output row answers one input line)") from None
    texts = [text for part in lines for text in part.texts]
    with _naming_lines(Lines(texts, lines[0].source)):
        vectors = encoder.encode(texts, batch_size=batch_size, show_progress=progress)
    out, start = [], 0
    for part in lines:
        out.append(vectors[start:start + len(part.texts)])
        start += len(part.texts)
    return out


def _cmd_embed(args: argparse.Namespace) -> None:
    from .api.encoder import Encoder

    kind = _output_format(args.output) if args.output else "jsonl"
    encoder = _open(Encoder, args, "embed")
    lines = _read_texts(args)
    _ensure_kernels()
    (vectors,) = _embed_lines(encoder, [lines], args.batch_size, args.progress)
    if kind == "npy":
        np.save(args.output, vectors)
    elif kind == "csv":
        np.savetxt(args.output, vectors, delimiter=",", fmt="%.7g")
    else:
        sink = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            for text, vector in zip(lines.texts, vectors):
                _json_line({"text": text, "embedding": [round(float(v), 7) for v in vector]}, sink)
        finally:
            if sink is not sys.stdout:
                sink.close()
    if args.output:
        print(f"wrote {args.output} ({vectors.shape[0]} rows of {vectors.shape[1]}, {kind})", file=sys.stderr)


def _cmd_similarity(args: argparse.Namespace) -> None:
    from .api.encoder import Encoder

    if args.files:
        if args.texts:
            raise InputError("give two texts, or --files A B, not both")
    elif len(args.texts) != 2:
        raise InputError(f"give two texts (got {len(args.texts)}), or two files of lines with --files A B")
    encoder = _open(Encoder, args, "similarity")
    if args.files:
        a, b = _read_lines(args.files[0]), _read_lines(args.files[1])
        if len(a.texts) != len(b.texts):
            raise InputError(f"{args.files[0]} has {len(a.texts)} lines but {args.files[1]} has {len(b.texts)}: "
                             "similarity compares line i of one with line i of the other")
    else:
        a, b = _argument_lines(args.texts[:1]), _argument_lines(args.texts[1:], first=2)
    _ensure_kernels()
    va, vb = (v.astype(np.float64) for v in _embed_lines(encoder, [a, b], args.batch_size, False))
    norms = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
    cosines = np.divide((va * vb).sum(axis=1), norms, out=np.zeros(len(norms)), where=norms > 0)
    for value in cosines:
        sys.stdout.write(f"{value:.6f}\n")


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


def _cmd_classify(args: argparse.Namespace) -> None:
    from .api.tasks import Classifier

    clf = _open(Classifier, args, "classify")
    lines = _read_texts(args)
    texts, pairs = lines.texts, None
    if args.pairs:
        split = [t.split("\t") for t in texts]
        for i, parts in enumerate(split):
            if len(parts) != 2:
                raise InputError(f"{lines.where(i)}: --pairs expects each text as 'first<TAB>second' "
                                 f"(found {len(parts) - 1} tabs)")
        texts, pairs = [a for a, _ in split], [b for _, b in split]
        _refuse_blanks(Lines(pairs, lines.source, lines.first), "classify --pairs")
    _refuse_blanks(Lines(texts, lines.source, lines.first), "classify")
    top_k = None if args.top_k == 0 else args.top_k
    _ensure_kernels()
    with _naming_lines(lines):
        results = clf.classify(texts, text_pair=pairs, top_k=top_k, batch_size=args.batch_size)
    _json_lines([{"text": t, **({"text_pair": pairs[i]} if pairs else {}), "labels": r}
                 for i, (t, r) in enumerate(zip(texts, results))])


def _cmd_rerank(args: argparse.Namespace) -> None:
    from .api.tasks import Classifier

    (query,) = _argument_lines([args.query]).texts
    if not query.strip():
        raise InputError("the query is blank; give the text to rank the documents against")
    clf = _open(Classifier, args, "rerank")
    lines = _read_texts(args)
    _refuse_blanks(lines, "rerank")
    _ensure_kernels()
    top_k = None if args.top_k == 0 else args.top_k
    with _naming_lines(lines):
        results = clf.rerank(query, lines.texts, top_k=top_k, batch_size=args.batch_size, label=args.label)
    _json_lines(results)


def _cmd_ner(args: argparse.Namespace) -> None:
    from .api.tasks import TokenClassifier

    model = _open(TokenClassifier, args, "ner")
    lines = _read_texts(args)
    # A blank line has no tokens, so no entities: its row is [] (transformers' pipeline gives [] for "").
    filled = [i for i, t in enumerate(lines.texts) if t.strip()]
    results: list = [[] for _ in lines.texts]
    if filled:
        _ensure_kernels()
        with _naming_lines(Lines([lines.texts[i] for i in filled], lines.source)):
            found = model.ner([lines.texts[i] for i in filled], aggregation=args.aggregation, stride=args.stride,
                              batch_size=args.batch_size)
        for i, r in zip(filled, found):
            results[i] = r
    _json_lines([{"text": t, "entities": r} for t, r in zip(lines.texts, results)])


def _cmd_fill_mask(args: argparse.Namespace) -> None:
    from .api.tasks import FillMask

    model = _open(FillMask, args, "fill-mask")
    lines = _read_texts(args)
    _refuse_blanks(lines, "fill-mask")
    _ensure_kernels()
    with _naming_lines(lines):
        results = model.fill(lines.texts, top_k=args.top_k, batch_size=args.batch_size)
    _json_lines([{"text": t, "predictions": r} for t, r in zip(lines.texts, results)])


def _cmd_qa(args: argparse.Namespace) -> None:
    from .api.tasks import QuestionAnswerer

    if (args.context is None) == (args.context_file is None):
        raise InputError("give the context with exactly one of --context TEXT or --context-file FILE")
    context = args.context and _utf8_argument(args.context)
    if context is None and args.context is not None:
        raise InputError("--context is not valid UTF-8 (undecodable bytes in the command line)")
    if args.context_file:
        try:
            context = Path(args.context_file).read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"{args.context_file} is not UTF-8 text ({exc})") from None
    if not context.strip():
        raise InputError("the context is blank; give the text that holds the answers")
    model = _open(QuestionAnswerer, args, "qa")
    questions = _read_texts(args)
    _refuse_blanks(questions, "qa")
    _ensure_kernels()
    with _naming_lines(questions):
        results = model.answer(questions.texts, [context] * len(questions.texts), top_k=args.top_k,
                               max_answer_len=args.max_answer_len)
    _json_lines([{"question": q, "answer": r} for q, r in zip(questions.texts, results)])


def _cmd_generate(args: argparse.Namespace) -> None:
    from .api.generator import Generator

    gen = _open(Generator, args, "generate")
    lines = _read_texts(args)
    _refuse_blanks(lines, "generate")
    _check_each(lines, gen._encode)
    prompts = lines.texts
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop or None,
                   seed=args.seed)
    _ensure_kernels()
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
                sys.stdout.write(r["text"].replace("\n", " ") + "\n")
        sys.stdout.flush()


def _chat_reply(gen, messages: list[dict], options: dict) -> str:
    """Stream the reply to ``messages`` to stdout; returns its text."""
    pieces = []
    for piece in gen.stream_chat(messages, **options):
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)


def _cmd_chat(args: argparse.Namespace) -> None:
    """One answer (--prompt), or a conversation: each stdin line is a user turn, answered with the history so far;
    EOF or /exit ends it, /reset forgets the history. A turn that fails (too long for the context, refused by the
    template) is reported and left out of the history."""
    from .api.generator import Generator
    from .generation import GenerationParams

    gen = _open(Generator, args, "chat")
    if gen.chat_template is None:
        raise InputError(f"{args.model} has no chat template: `tinybert chat` needs an instruct or chat model "
                         "(use `tinybert generate` to continue plain prompts)")
    history = [{"role": "system", "content": args.system}] if args.system is not None else []
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop or None,
                   seed=args.seed)
    # checked once here, not when the first turn starts: a bad option is not a failed turn
    GenerationParams(**{k: v for k, v in options.items() if k != "stop"}).validate()
    gen._stops(options["stop"])
    if args.prompt is not None:
        messages = history + [{"role": "user", "content": args.prompt}]
        gen.render_chat(messages)       # a refused conversation fails before any compile
        _ensure_kernels()
        _chat_reply(gen, messages, options)
        return
    interactive = sys.stdin.isatty()
    ready = False
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:
            break
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            print(f"tinybert: error: the line is not UTF-8 (byte {exc.start})", file=sys.stderr)
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = history[:1] if args.system is not None else []
            continue
        if not line.strip():
            continue
        messages = history + [{"role": "user", "content": line}]
        try:
            gen.render_chat(messages)
            if not ready:
                _ensure_kernels()
                ready = True
            reply = _chat_reply(gen, messages, options)
        except InputError as exc:
            print(f"tinybert: error: {exc}", file=sys.stderr)
            continue
        history = messages + [{"role": "assistant", "content": reply}]


_SEQ2SEQ_OPTIONS = ("beam_size", "max_length", "min_length", "length_penalty", "no_repeat_ngram_size",
                    "num_hypotheses", "repetition_penalty", "temperature", "top_k", "top_p", "seed", "batch_size",
                    "truncation", "src_lang", "tgt_lang")


def _cmd_translate(args: argparse.Namespace) -> None:
    from .api.translator import Translator

    model = _open(Translator, args, args.command)
    lines = _read_texts(args)
    run = model.summarize if args.command == "summarize" else model.translate
    options = {name: getattr(args, name) for name in _SEQ2SEQ_OPTIONS if getattr(args, name) is not None}
    source_code, _ = model._languages(args.src_lang, args.tgt_lang)     # a bad or missing code fails first
    _check_each(lines, lambda text: model._encode(text, options["truncation"], source_code), skip_blank=True)
    # A blank line translates to a blank line: the rows of the output stay those of the input.
    filled = [i for i, t in enumerate(lines.texts) if t.strip()]
    hypotheses = options.get("num_hypotheses", 1)
    empty = {"text": "", "token_ids": [], "finish_reason": "empty"}
    results: list = [[empty] * hypotheses for _ in lines.texts]
    if filled:
        _ensure_kernels()
        # A file gets a progress bar (on stderr) unless --quiet; results are written in input order.
        progress = bool(args.file) and not args.quiet
        found = run([lines.texts[i] for i in filled], return_ids=True, show_progress=progress, **options)
        for i, result in zip(filled, found):
            results[i] = result if isinstance(result, list) else [result]
    for text, hyps in zip(lines.texts, results):
        if args.json:
            _json_line({"source": text, "hypotheses": hyps} if hypotheses > 1 else {"source": text, **hyps[0]})
        else:
            sys.stdout.write("\t".join(h["text"].replace("\n", " ").replace("\t", " ") for h in hyps) + "\n")
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


def _describe_source(source: object) -> str:
    """The converter's ``source`` record as one line: "bert (BertModel) from sentence-transformers/..."."""
    if not isinstance(source, dict):
        return str(source) or "unknown"
    text = str(source.get("model_type") or "unknown model type")
    archs = source.get("architectures")
    if isinstance(archs, list) and archs:
        text += f" ({', '.join(map(str, archs))})"
    if source.get("name_or_path"):
        text += f" from {source['name_or_path']}"
    return text


def _ids(values: object) -> str:
    return ", ".join(map(str, values)) if values else "none"


def _cmd_serve(args: argparse.Namespace) -> None:
    try:
        from .server import serve
    except ImportError as exc:
        raise InputError(f"tinybert serve needs the serve extra: pip install 'tinybert[serve]' ({exc})") from None
    if not 0 < args.port < 65536 or args.parallel < 1 or (args.context is not None and args.context < 2):
        raise InputError("--port must be 1..65535, --parallel at least 1, --context at least 2")
    print(f"tinybert: serving {', '.join(args.models)} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    serve(args.models, host=args.host, port=args.port, api_key=args.api_key, threads=args.threads, dtype=args.dtype,
          parallel=args.parallel, context=args.context or 4096)


def _cmd_info(args: argparse.Namespace) -> None:
    from . import format as fmt
    from .api.resolve import resolve
    from .loader import load

    model = load(resolve(args.model, args.dtype, args.revision)[0])
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
        "dense": model.dense,
        "task": model.task.to_dict(),
        "source": _source(model.metadata.get("source", "")),
    }
    if model.chat_template is not None:
        info["chat_template"] = model.chat_template
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return
    source = _describe_source(info["source"])
    # sentence-transformers' Dense modules after pooling, as their widths: "Dense 768→3072→768"
    widths = [model.dense[0]["in_features"]] + [d["out_features"] for d in model.dense] if model.dense else []
    dense = f"Dense {'→'.join(map(str, widths))}" if widths else ""
    print(f"{model.path}  ({info['file_bytes'] / 1e6:.1f} MB, format v{info['format_version']})")
    if cfg.kind == "decoder":
        print(f"  architecture  {cfg.architecture} decoder, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
              f"{cfg.num_heads} heads ({cfg.num_kv_heads} key/value), intermediate {cfg.intermediate_size}, "
              f"{cfg.norm}, {cfg.activation}{' gated' if cfg.gated_mlp else ''}, {cfg.positions} positions"
              f"{'' if cfg.causal else ', bidirectional'}")
        print(f"  vocabulary    {cfg.vocab_size} tokens, context {cfg.max_positions}")
        print(f"  weights       {params / 1e6:.1f} M parameters, {model.quantization}")
        if model.task.type == "feature-extraction":      # a decoder embedder (Qwen3-Embedding)
            print(f"  task          feature-extraction ({model.pooling['mode']} pooling{', ' + dense if dense else ''}"
                  f"{', normalized' if model.pooling['normalize'] else ''})")
            print(f"  source        {source}")
            print("  use           tinybert embed, tinybert similarity")
            return
        print(f"  task          text-generation (end-of-sequence ids {_ids(cfg.eos_token_ids)})")
        print(f"  chat          {'template kept' if model.chat_template else 'no template'}")
        print(f"  source        {source}")
        print(f"  use           tinybert generate{', tinybert chat' if model.chat_template else ''}")
        return
    if cfg.kind == "encoder-decoder":
        print(f"  architecture  {cfg.family} encoder-decoder, {cfg.num_encoder_layers}+{cfg.num_decoder_layers} "
              f"layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, intermediate {cfg.intermediate_size}, "
              f"{cfg.norm}, {cfg.activation}{' gated' if cfg.gated_mlp else ''}, {cfg.positions} positions")
        print(f"  vocabulary    {cfg.vocab_size} tokens (decoder {cfg.decoder_vocab_size}), max length "
              f"{cfg.max_positions}{', own target tokenizer' if model.target_tokenizer_json else ''}")
        print(f"  weights       {params / 1e6:.1f} M parameters, {model.quantization}")
        print(f"  task          text2text-generation (decoder start id {cfg.decoder_start_token_id}, "
              f"end-of-sequence ids {_ids(cfg.eos_token_ids)})")
        print(f"  source        {source}")
        print("  use           tinybert translate, tinybert summarize")
        return
    print(f"  architecture  {cfg.architecture} encoder, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.num_heads} heads, intermediate {cfg.intermediate_size}, {cfg.activation}")
    print(f"  vocabulary    {cfg.vocab_size} tokens, max length {cfg.max_length}")
    print(f"  weights       {params / 1e6:.1f} M parameters, {model.quantization}")
    print(f"  pooling       {model.pooling['mode']}{' + ' + dense if dense else ''}"
          f"{' + L2 normalize' if model.pooling['normalize'] else ''}")
    task = model.task
    labels = f" ({len(task.labels)} labels: {', '.join(task.labels[:8])}{' ...' if len(task.labels) > 8 else ''})" \
        if task.labels else ""
    print(f"  task          {task.type}{labels}")
    print(f"  source        {source}")
    print(f"  use           tinybert {_COMMAND_FOR_TASK.get(task.type, 'embed').replace('` or `', ', ')}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run

    _ensure_kernels()
    run(model=args.model, top_k=args.top_k)


# --------------------------------------------------------------------------- the parser

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless there is none to show (None, False) or the help
    already states it in words ("default: all threads")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not False or isinstance(action, argparse.BooleanOptionalAction)
        if action.default is None or not shown or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


def _api_default(name: str, *functions: Callable) -> object:
    """The default of parameter ``name`` in the first of ``functions`` that declares one: the help shows what
    the Python API does, so the two cannot drift apart."""
    for function in functions:
        parameter = inspect.signature(function).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise KeyError(name)


_THREADS_HELP = "most threads to run on (default: all Numba threads, NUMBA_NUM_THREADS)"


def build_parser() -> argparse.ArgumentParser:
    from .api.generator import Generator
    from .api.translator import Translator

    parser = argparse.ArgumentParser(prog="tinybert", formatter_class=_HelpFormatter,
                                     description="CPU Transformer inference with one-file int8 models. Text "
                                                 "commands read arguments, --file or stdin lines and write one "
                                                 "row per input line on stdout.")
    parser.add_argument("--version", action="version", version=f"tinybert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, func: Callable, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description or help_text, formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("convert", "convert a Hugging Face model folder (or a GGUF file) to one tinybert file", _cmd_convert)
    p.add_argument("src", help="Hugging Face model folder (config.json, tokenizer.json, weights), Hub id (org/name) "
                               "or GGUF file (llama.cpp's format)")
    p.add_argument("--revision", help="branch, tag or commit of a Hub id")
    p.add_argument("out", help="output .safetensors file (checked before the folder is read)")
    p.add_argument("--dtype", choices=["int8", "int4", "fp32"], default="int8",
                   help="weight type (int4: 4-bit linears where calibration keeps them accurate; encoders, decoders)")
    p.add_argument("--task", choices=["feature-extraction", "sequence-classification", "token-classification",
                                      "question-answering", "masked-lm", "pretraining", "text-generation",
                                      "text2text-generation"],
                   help="head to convert (default: what config.json's architectures names)")
    p.add_argument("--act12", action="store_true",
                   help="int8: 12-bit inputs in every layer (default: 8-bit inputs where calibration "
                        "shows they keep the accuracy, which is faster on AVX-512 VNNI)")
    p.add_argument("--int4-budget", type=float, metavar="ERROR",
                   help="int4: keep int8 the layers the output is most sensitive to until the estimated error "
                        "(mean 1 - cosine on the calibration text) is within ERROR (encoders: 0.005 unless given; "
                        "1: every layer 4-bit that can be)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (never a file of SRC)")

    def text_command(name: str, help_text: str, func: Callable, batch_size: int = 32,
                     description: str | None = None) -> argparse.ArgumentParser:
        p = command(name, help_text, func, (description or help_text + ".") + " Texts come as arguments, from "
                    "--file or from stdin lines.")
        p.add_argument("model", help="a tinybert file, a Hugging Face folder or a Hub id (org/name)")
        p.add_argument("texts", nargs="*", help="texts; if none, read --file or stdin (one per line)")
        p.add_argument("--file", help="read texts from this UTF-8 file, one per line")
        p.add_argument("--batch-size", type=int, default=batch_size, help="texts per batch")
        p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
        return p

    p = text_command("embed", "embed texts; one JSON line (or row of --output) per input line", _cmd_embed)
    p.add_argument("--output", "-o",
                   help="write here instead of stdout, in the format of the extension: .jsonl or .json (JSON "
                        "lines), .npy (float32 [rows, dim]) or .csv (comma-separated numbers, no header); "
                        "default: JSON lines on stdout")
    p.add_argument("--progress", action="store_true", help="show a progress bar")

    p = command("similarity", "cosine similarity of two texts, or of two files line by line", _cmd_similarity,
                "Embeds both sides with the model's own pooling and prints cos(a, b), one number per line: "
                "`similarity MODEL A B` or `similarity MODEL --files a.txt b.txt` (line i with line i).")
    p.add_argument("model", help="an encoder: a tinybert file, a Hugging Face folder or a Hub id")
    p.add_argument("texts", nargs="*", help="the two texts to compare")
    p.add_argument("--files", nargs=2, metavar=("A", "B"), help="compare line i of A with line i of B")
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch")
    p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)

    p = command("embed-corpus", "embed a Parquet or JSON-lines corpus on Ray (local, or a cluster)", _cmd_embed_corpus)
    p.add_argument("model", help="a tinybert file, a Hugging Face folder or a Hub id (org/name)")
    p.add_argument("input", help="corpus: .parquet, or .jsonl / .json (JSON lines), one row per text")
    p.add_argument("output", help="same formats; every input column kept, the embedding added, rows in input order")
    p.add_argument("--address", help="Ray cluster to run on (e.g. auto, ray://head:10001; default: a local instance)")
    p.add_argument("--text-column", default="text", help="column holding the texts")
    p.add_argument("--output-column", default="embedding", help="column to write the vectors to")
    p.add_argument("--batch-size", type=int, default=256, help="rows per batch sent to a worker")
    p.add_argument("--workers", type=int, default=None,
                   help="worker actors (default: as many as the cluster's CPUs allow); with --max-workers, the minimum")
    p.add_argument("--max-workers", type=int, default=None, help="let Ray scale the workers from --workers up to this")
    p.add_argument("--threads-per-worker", type=int, default=1, help="CPUs (Numba threads) per worker")
    p.add_argument("--model-transport", choices=["auto", "path", "object-store"], default="auto",
                   help="how workers get the model: its path (shared storage) or Ray's object store "
                        "(auto: path on one machine, object store on a cluster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = text_command("classify", "classify texts; one JSON line per input line", _cmd_classify)
    p.add_argument("--top-k", type=int, default=1, help="labels per text (0: all)")
    p.add_argument("--pairs", action="store_true", help="each text is 'first<TAB>second' (sentence pairs)")

    p = command("rerank", "rank documents by relevance to a query with a cross-encoder", _cmd_rerank,
                "Scores each document (arguments, --file or stdin lines) against QUERY with a cross-encoder "
                "(a sequence-classification file) and prints JSON lines {\"index\", \"document\", \"score\"}, best "
                "first; index counts the documents from 0 (line number - 1).")
    p.add_argument("model", help="a cross-encoder: a tinybert file, a Hugging Face folder or a Hub id")
    p.add_argument("query", help="the query")
    p.add_argument("texts", nargs="*", help="documents; if none, read --file or stdin (one per line)")
    p.add_argument("--file", help="read documents from this UTF-8 file, one per line")
    p.add_argument("--top-k", type=int, default=0, help="documents to print (0: all)")
    p.add_argument("--label", help="multi-label models: the label whose probability scores (default: the last)")
    p.add_argument("--batch-size", type=int, default=32, help="documents per batch")
    p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)

    p = text_command("ner", "named entities / token classification; one JSON line per input line", _cmd_ner)
    p.add_argument("--aggregation", default="simple", choices=["none", "simple", "first", "average", "max"],
                   help="how tokens group into entities (transformers' aggregation_strategy)")
    p.add_argument("--stride", type=int, default=None,
                   help="split long texts into windows sharing this many tokens (default: truncate them)")
    p = text_command("fill-mask", "predict the mask token; one JSON line per input line", _cmd_fill_mask)
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask")
    p = text_command("qa", "answer questions from a context; one JSON line per question", _cmd_qa)
    p.add_argument("--context", help="the context text")
    p.add_argument("--context-file", help="read the context from this UTF-8 file")
    p.add_argument("--top-k", type=int, default=1, help="answers per question")
    p.add_argument("--max-answer-len", type=int, default=30, help="most tokens in an answer")

    generate = Generator.generate
    p = text_command("generate", "continue prompts with a decoder (GPT-2, Llama); one line per prompt",
                     _cmd_generate, batch_size=_api_default("batch_size", generate))
    p.add_argument("--max-new-tokens", type=int, default=_api_default("max_new_tokens", generate),
                   help="most tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=_api_default("temperature", generate),
                   help="0 is greedy; > 0 samples")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of this probability")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeated tokens")
    p.add_argument("--stop", action="append", help="stop string (repeatable); output ends where it starts")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling (reproducible draws)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true",
                   help="JSON lines with token ids and finish reason (exact text; plain output turns newlines "
                        "inside a continuation into spaces to keep one line per prompt)")

    chat = Generator.stream_chat
    p = command("chat", "chat with an instruct decoder, streaming its replies", _cmd_chat,
                "Talk to an instruct or chat model (its file keeps the checkpoint's chat template): each line on "
                "stdin is your turn and the streamed reply follows, with the conversation so far as context; "
                "EOF or /exit ends, /reset starts over. --prompt answers once.")
    p.add_argument("model", help="a decoder with a chat template: a tinybert file, a Hugging Face folder or a Hub id")
    p.add_argument("--prompt", help="answer this one message and exit")
    p.add_argument("--system", help="system message opening the conversation")
    p.add_argument("--max-new-tokens", type=int, default=_api_default("max_new_tokens", chat),
                   help="most tokens per reply")
    p.add_argument("--temperature", type=float, default=_api_default("temperature", chat),
                   help="0 is greedy; > 0 samples")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of this probability")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeated tokens")
    p.add_argument("--stop", action="append", help="stop string (repeatable); a reply ends where it starts")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling (reproducible draws)")
    p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)

    for name, help_text, run in (
            ("translate", "translate texts with an encoder-decoder (T5, mT5, BART, mBART, Marian, M2M-100, NLLB); "
                          "one line out per line in",
             Translator.translate),
            ("summarize", "summarise texts with an encoder-decoder (BART, T5 with 'summarize: '); one line out "
                          "per line in", Translator.summarize)):
        def default(option: str, run: Callable = run) -> object:
            return _api_default(option, run, Translator.translate)

        p = text_command(name, help_text, _cmd_translate, batch_size=default("batch_size"),
                         description=help_text + ". T5 wants its task prefix in the text. A blank line gives a "
                                                 "blank line.")
        p.add_argument("--beam-size", type=int, default=default("beam_size"),
                       help="beams; 1 is greedy (or sampled with --temperature)")
        p.add_argument("--max-length", type=int, default=default("max_length"),
                       help="most new tokens per text (EOS included)")
        p.add_argument("--min-length", type=int, default=default("min_length"),
                       help="fewest new tokens before EOS may come")
        p.add_argument("--length-penalty", type=float, default=default("length_penalty"),
                       help="beam score exponent on the length (> 1 favours longer outputs)")
        p.add_argument("--no-repeat-ngram-size", type=int, default=default("no_repeat_ngram_size"),
                       help="forbid repeating n-grams of this size (0: off)")
        p.add_argument("--num-hypotheses", type=int, default=default("num_hypotheses"),
                       help="hypotheses per text (tab-separated)")
        p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeated tokens")
        p.add_argument("--temperature", type=float, default=default("temperature"),
                       help="> 0 samples (with --beam-size 1)")
        p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
        p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of this probability")
        p.add_argument("--seed", type=int, default=None, help="seed of the sampling (reproducible draws)")
        p.add_argument("--truncation", action=argparse.BooleanOptionalAction, default=default("truncation"),
                       help="cut texts longer than the model takes (otherwise such a text is an error)")
        p.add_argument("--src-lang", default=None,
                       help="multilingual models (NLLB, M2M-100, mBART-50): the texts' language code, e.g. "
                            "eng_Latn (default: the tokenizer's)")
        p.add_argument("--tgt-lang", default=None,
                       help="multilingual models: the code of the language to translate into (required there)")
        p.add_argument("--json", action="store_true", help="JSON lines with token ids and finish reason")
        p.add_argument("--quiet", action="store_true", help="no progress bar for --file")

    p = command("build-capi", "build the C library: libtinybert.so, tinybert.h, tinybert.pc", _cmd_build_capi)
    p.add_argument("outdir", help="folder to write them to")
    p.add_argument("--verbose", action="store_true", help="show the compiler commands")
    # What the library records about its Python is normally taken from this interpreter; these replace
    # it (the tests use them to build a library whose environment is missing).
    p.add_argument("--python-home", help=argparse.SUPPRESS)
    p.add_argument("--sitedirs", help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)

    p = command("serve", "serve models over HTTP: OpenAI and TEI routes (needs the serve extra)", _cmd_serve)
    p.add_argument("models", nargs="+", metavar="MODEL", help="tinybert files, Hugging Face folders or Hub ids")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: no key)")
    p.add_argument("--parallel", type=int, default=8, help="generations decoded together (cache slots)")
    p.add_argument("--context", type=int, default=None,
                   help="positions each generation slot holds (default: the model's, at most 4096)")
    p.add_argument("--dtype", choices=["int8", "int4", "fp32"], default="int8",
                   help="weight type for folders, Hub ids and GGUF files")
    p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)

    p = command("info", "describe a tinybert model file", _cmd_info)
    p.add_argument("model", help="a tinybert file, a Hugging Face folder or a Hub id (org/name)")
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")

    p = command("demo", "semantic search with the embedded all-MiniLM-L6-v2 (no download)", _cmd_demo)
    p.add_argument("--model", help="use this tinybert file instead of the default model")
    p.add_argument("--top-k", type=int, default=3, help="sentences per query")

    p = command("warmup", "compile and cache the kernels now (otherwise the first call does it)", _cmd_warmup)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for name in _MODEL_COMMANDS:         # every command that opens a model takes it by name too (docs/loading.md)
        p = sub.choices[name]
        p.add_argument("--dtype", choices=["int8", "int4", "fp32"], default="int8",
                       help="what a Hugging Face folder, Hub id or GGUF file is converted to (a tinybert file "
                            "keeps its own)")
        p.add_argument("--revision", help="branch, tag or commit of a Hub id")
    return parser


_MODEL_COMMANDS = ("embed", "similarity", "classify", "rerank", "ner", "fill-mask", "qa", "generate", "translate",
                   "summarize", "info", "chat")


_TEXT_COMMANDS = ("embed", "classify", "rerank", "ner", "fill-mask", "qa", "generate", "translate", "summarize",
                  "similarity")


def _utf8_stdio() -> None:
    """UTF-8 on stdout and stderr whatever the locale (LANG=C would make Python write ASCII and fail on "é").
    Input is read as bytes and decoded as UTF-8 by _read_lines."""
    for stream, errors in ((sys.stdout, "strict"), (sys.stderr, "backslashreplace")):
        try:
            stream.reconfigure(encoding="utf-8", errors=errors)
        except (AttributeError, ValueError, OSError):   # not a text stream of a file (an in-process caller's)
            pass


def _quiet_broken_pipe() -> int:
    """The reader of stdout is gone (``| head``). Point stdout at /dev/null so that the interpreter's final
    flush cannot fail again and print "Exception ignored ... BrokenPipeError"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def _without_compile_notice(record: logging.LogRecord) -> bool:
    # The command says it compiles (with a progress bar) once its input is checked; the API's notice at model
    # opening would come first and twice, and even before an error in the input.
    from .api.warmup import COMPILE_NOTICE

    return record.getMessage() != COMPILE_NOTICE


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit status: 0, 2 on an error,
    141 when stdout's reader closed the pipe, 130 on Ctrl-C."""
    _utf8_stdio()
    # The command says itself when it compiles; the filter lasts for this call only (a program or a test may call
    # main() and then the API, which must still say it).
    logger = logging.getLogger("tinybert")
    added = _without_compile_notice not in logger.filters
    if added:
        logger.addFilter(_without_compile_notice)
    try:
        return _run(argv)
    finally:
        if added:
            logger.removeFilter(_without_compile_notice)


def _run(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        # `embed MODEL -o out.npy "text"`: argparse leaves texts that follow an option unparsed.
        args, extra = parser.parse_known_args(argv)
        if extra:
            if args.command not in _TEXT_COMMANDS or any(e.startswith("-") for e in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.texts = list(args.texts) + extra
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (TinyBertError, OSError) as exc:
        print(f"tinybert: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tinybert: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
