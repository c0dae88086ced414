"""The Python half of libtinybert.so: the C functions' bodies, over tinybert's Python API.

``install(ffi, lib)`` runs once, inside the embedded interpreter, when the library's first call starts
Python; it defines the ``_tbpy_*`` extern "Python" callbacks that capi/shell.c calls. Each returns 1 on
success or a negative TB_ERR_* code after recording the message with ``lib._tb_set_error`` (0 is left to
mean "Python failed"; see shell.c). Models live in a registry keyed by the integer handles given to C, so
a handle C did not get from here is an error, never a dereference.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import threading
from collections.abc import Callable, Iterator

OK = 1
ERR_INVALID_ARGUMENT = -1
ERR_BUFFER_TOO_SMALL = -2
ERR_INVALID_UTF8 = -3
ERR_WRONG_MODEL_KIND = -4
ERR_FILE = -5
ERR_INTERNAL = -6
ERR_BUSY = -7


class CallError(Exception):
    """A failure with its C status code (and, for a small buffer, the size needed)."""

    def __init__(self, code: int, message: str, needed: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.needed = needed


class _Model:
    def __init__(self, api: object, kind: str) -> None:
        self.api = api
        self.kind = kind
        self.lock = threading.Lock()
        self.owner: int | None = None       # the thread inside a call on this model, if any

    @contextlib.contextmanager
    def use(self) -> Iterator[object]:
        """The model's API object, one call at a time. A call from the thread already inside a call on this
        model (a streaming callback calling back into it) is TB_ERR_BUSY: waiting for the lock would wait for
        itself."""
        if self.owner == threading.get_ident():
            raise CallError(ERR_BUSY, "this model is busy: a callback may not call the model whose call invoked it")
        with self.lock:
            self.owner = threading.get_ident()
            try:
                yield self.api
            finally:
                self.owner = None


_models: dict[int, _Model] = {}
_registry_lock = threading.Lock()
# Handles look like aligned pointers but are only keys: C never dereferences them.
_next_handle = itertools.count(0x7B000010, 16)


def _status(exc: BaseException) -> CallError:
    from tinybert.errors import InputError, ModelFileError, ModelKindError, TinyBertError

    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, ModelKindError):
        return CallError(ERR_WRONG_MODEL_KIND, str(exc))
    if isinstance(exc, ModelFileError):
        return CallError(ERR_FILE, str(exc))
    if isinstance(exc, InputError):
        return CallError(ERR_INVALID_ARGUMENT, str(exc))
    if isinstance(exc, TinyBertError):
        return CallError(ERR_INTERNAL, str(exc))
    if isinstance(exc, MemoryError):
        return CallError(ERR_INTERNAL, "out of memory")
    return CallError(ERR_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def _text(ffi, pointer, what: str) -> str:
    if pointer == ffi.NULL:
        raise CallError(ERR_INVALID_ARGUMENT, f"{what} is NULL")
    raw = ffi.string(pointer)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CallError(ERR_INVALID_UTF8, f"{what} is not valid UTF-8 (byte {exc.start})") from None


def _write_text(ffi, out, out_len: int, text: str, what: str) -> None:
    data = text.encode("utf-8") + b"\0"
    if len(data) > out_len:
        raise CallError(ERR_BUFFER_TOO_SMALL, f"{what} needs {len(data)} bytes, {out_len} given", len(data))
    ffi.memmove(out, data, len(data))


def install(ffi, lib) -> None:
    """Define the extern "Python" callbacks of the library's cffi module."""

    def guarded(fn: Callable[..., None]) -> Callable[..., int]:
        @functools.wraps(fn)
        def call(*args) -> int:
            try:
                fn(*args)
                return OK
            except BaseException as exc:  # nothing may propagate into C
                err = _status(exc)
                lib._tb_set_error(str(err).encode("utf-8", "replace")[:2000], err.needed)
                return err.code

        return call

    def model(handle: int, *kinds: str) -> _Model:
        entry = _models.get(int(handle))
        if entry is None:
            raise CallError(ERR_INVALID_ARGUMENT, "unknown or freed model handle")
        if kinds and entry.kind not in kinds:
            raise CallError(ERR_WRONG_MODEL_KIND, f"this is a {entry.kind} model; the call needs "
                                                  f"{' or '.join(kinds)}")
        return entry

    @ffi.def_extern(error=0)
    @guarded
    def _tbpy_model_load(path, n_threads, handle_out) -> None:
        from tinybert import Classifier, Encoder, Generator, ModelFileError, Translator
        from tinybert.loader import read_metadata

        name = _text(ffi, path, "path")
        threads = None if n_threads == 0 else int(n_threads)
        # The file's kind and task pick the API class; its constructor then validates the whole file.
        metadata = read_metadata(name)
        try:
            kind = json.loads(metadata.get("config", "{}")).get("kind", "encoder")
            task = json.loads(metadata.get("task", "{}")).get("type")
        except (ValueError, AttributeError, RecursionError):
            raise ModelFileError(f"{name}: bad config or task metadata") from None
        if kind == "decoder" and task != "feature-extraction":     # a decoder embedder is an encoder here
            api = Generator(name, threads=threads)
        elif kind == "encoder-decoder":
            api = Translator(name, threads=threads)
        else:
            kind = "encoder"
            api = (Classifier if task == "sequence-classification" else Encoder)(name, threads=threads)
        with _registry_lock:
            handle = next(_next_handle)
            _models[handle] = _Model(api, kind)
        handle_out[0] = handle

    @ffi.def_extern(error=0)
    @guarded
    def _tbpy_model_free(handle) -> None:
        with _registry_lock:
            entry = _models.pop(int(handle), None)
        if entry is None or entry.owner == threading.get_ident():
            # Freed from a callback of its own call: the handle is gone now, the model when that call returns.
            return
        with entry.lock:       # let a call still running on another thread finish first
            entry.api = None

    @ffi.def_extern(error=0)
    @guarded
    def _tbpy_embedding_dim(handle, dim_out) -> None:
        # what encode returns per text: the model's truncate_dim when it sets a smaller one
        dim_out[0] = model(handle, "encoder").api.get_sentence_embedding_dimension()

    @ffi.def_extern(error=0)
    @guarded
    def _tbpy_encode(handle, texts, n_texts, out, out_len) -> None:
        entry = model(handle, "encoder")
        if n_texts == 0 or n_texts > 1_000_000:       # 0: Encoder.encode would return no rows
            raise CallError(ERR_INVALID_ARGUMENT, f"n_texts {n_texts} must lie in [1, 1000000]")
        strings = [_text(ffi, texts[i], f"texts[{i}]") for i in range(n_texts)]
        with entry.use() as api:
            needed = n_texts * api.get_sentence_embedding_dimension()
            if out_len < needed:
                raise CallError(ERR_BUFFER_TOO_SMALL, f"tb_encode needs {needed} floats in out, {out_len} given",
                                needed)
            vectors = api.encode(strings)
        ffi.memmove(out, vectors.tobytes(), vectors.nbytes)

    @ffi.def_extern(error=0)
    @guarded
    def _tbpy_classify(handle, text, label, label_len, score) -> None:
        from tinybert import Classifier

        entry = model(handle, "encoder")
        if not isinstance(entry.api, Classifier):
            raise CallError(ERR_WRONG_MODEL_KIND, "this encoder file has no sequence-classification head")
        string = _text(ffi, text, "text")
        with entry.use() as api:
            best = api.classify(string, top_k=1)[0]
        _write_text(ffi, label, label_len, best["label"], "label")
        if score != ffi.NULL:
            score[0] = best["score"]

    def generate_options(params) -> dict:
        options = {"max_new_tokens": int(params.max_new_tokens), "temperature": float(params.temperature)}
        if params.top_k < 0:
            raise CallError(ERR_INVALID_ARGUMENT, f"top_k must be >= 0 (0 = off), got {params.top_k}")
        if params.top_k:
            options["top_k"] = int(params.top_k)
        if params.top_p != 1.0:
            options["top_p"] = float(params.top_p)
        if params.repetition_penalty != 1.0:
            options["repetition_penalty"] = float(params.repetition_penalty)
        if params.seed < -1:
            raise CallError(ERR_INVALID_ARGUMENT, f"seed must be -1 (unseeded) or >= 0, got {params.seed}")
        if params.seed >= 0:
            options["seed"] = int(params.seed)
        return options

    @ffi.def_extern(error=0)
    @guarded
    def _tbpy_generate(handle, prompt, params, on_piece, user_data, out, out_len) -> None:
        entry = model(handle, "decoder")
        string = _text(ffi, prompt, "prompt")
        options = generate_options(params)
        with entry.use() as api:
            run_generation(out, out_len, on_piece, user_data, lambda: api.generate(string, **options),
                           lambda: api.stream(string, **options))

    def run_generation(ffi_out, out_len, on_piece, user_data, complete, stream) -> None:
        """``complete()`` (the whole text) without a callback; with one, ``stream()``'s pieces to it until it
        returns non-zero. The text so far goes to out."""
        if on_piece == ffi.NULL:
            text = complete()
        else:
            pieces = []
            iterator = stream()
            try:
                for piece in iterator:
                    pieces.append(piece)
                    if on_piece(ffi.new("char[]", piece.encode("utf-8")), user_data) != 0:
                        break
            finally:
                iterator.close()
            text = "".join(pieces)
        if ffi_out != ffi.NULL:
            _write_text(ffi, ffi_out, out_len, text, "out")

    @ffi.def_extern(error=0)
    @guarded
    def _tbpy_chat(handle, messages_json, params, on_piece, user_data, out, out_len) -> None:
        entry = model(handle, "decoder")
        text = _text(ffi, messages_json, "messages_json")
        try:
            messages = json.loads(text)
        except (ValueError, RecursionError):
            raise CallError(ERR_INVALID_ARGUMENT, "messages_json is not valid JSON: give an array of "
                                                  '{"role": ..., "content": ...} objects') from None
        options = generate_options(params)
        with entry.use() as api:
            run_generation(out, out_len, on_piece, user_data, lambda: api.chat(messages, **options),
                           lambda: api.stream_chat(messages, **options))

    @ffi.def_extern(error=0)
    @guarded
    def _tbpy_translate(handle, text, params, src_lang, tgt_lang, out, out_len) -> None:
        entry = model(handle, "encoder-decoder")
        string = _text(ffi, text, "text")
        languages = {name: _text(ffi, code, name) for name, code in (("src_lang", src_lang), ("tgt_lang", tgt_lang))
                     if code != ffi.NULL}
        if params.truncation not in (0, 1):
            raise CallError(ERR_INVALID_ARGUMENT, f"truncation must be 0 or 1, got {params.truncation}")
        options = {"beam_size": int(params.beam_size), "max_length": int(params.max_length),
                   "min_length": int(params.min_length), "length_penalty": float(params.length_penalty),
                   "no_repeat_ngram_size": int(params.no_repeat_ngram_size), "truncation": bool(params.truncation)}
        if params.repetition_penalty != 1.0:
            options["repetition_penalty"] = float(params.repetition_penalty)
        with entry.use() as api:
            result = api.translate(string, **options, **languages)
        _write_text(ffi, out, out_len, result, "out")
