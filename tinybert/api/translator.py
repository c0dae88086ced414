"""``Translator``: translation and summarisation with an encoder-decoder model (T5, mT5, BART, mBART, Marian,
M2M-100, NLLB).

Inputs run through the one generation driver (tinybert/generation/driver.py): up to ``batch_size`` at once,
each with its own search (greedy, sampled or beam) and its own block of cache slots; the encoder runs on
the packed sources of the inputs admitted together (no padding), then one decoder step per new token for
every unfinished input. Every kernel computes each row from that row alone, so an input's output never
depends on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import Seq2SeqConfig
from ..errors import InputError
from ..generation import BeamSearch, GenerationParams, SampleSearch
from ..generation import decode as decode_all
from ..layers import KVCache
from ..models.seq2seq import Seq2SeqModel
from ..tokenizer import Decoder, check_texts, load_tokenizer
from .opening import OpenedModel, open_model
from .scheduler import numba_threads

# translate()'s names for the engine's settings, in messages
_NAMES = {"num_beams": "beam_size", "max_new_tokens": "max_length", "min_new_tokens": "min_length",
          "num_return_sequences": "num_hypotheses"}


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


class Translator(OpenedModel):
    """An encoder-decoder model loaded from a tinybert file.

    >>> tr = Translator("opus-mt-en-de.int8.safetensors")
    >>> tr.translate(["Hello world.", "How are you?"])
    ['Hallo Welt.', 'Wie geht es dir?']
    >>> Translator("t5-small.int8.safetensors").translate("translate English to German: Thank you.")
    'Vielen Dank.'

    T5 takes its task as a text prefix, written by the caller ("translate English to German: ",
    "summarize: "). Multilingual models (NLLB-200, M2M-100, mBART-50) take language codes:

    >>> Translator("nllb-200-distilled-600M.int8.safetensors").translate("Hello.", src_lang="eng_Latn",
    ...                                                                   tgt_lang="fra_Latn")
    'Bonjour.'

    ``languages`` lists a model's codes. ``threads`` caps the Numba worker threads (default: all).
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, dtype: str = "int8",
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        opened = open_model(path, "encoder-decoder", threads, "Translator", dtype=dtype, revision=revision,
                           local_files_only=local_files_only)
        model_file = opened.file
        self._take(opened)
        self.config: Seq2SeqConfig
        self._source_ids = model_file.source_id_map
        self._unknown_pieces = model_file.source_unknown_pieces
        clean_up = model_file.tokenizer_options["clean_up_tokenization_spaces"]
        target = model_file.target_tokenizer_json
        self._decoder = Decoder(load_tokenizer(target, self.config.max_positions) if target else self.tokenizer,
                                clean_up)
        self._model = Seq2SeqModel(self.config, model_file.tensors)

    # ------------------------------------------------------------------ public API

    @property
    def languages(self) -> list[str]:
        """The language codes the model takes as ``src_lang`` / ``tgt_lang`` (empty if it takes none)."""
        return sorted(self.config.language_codes)

    def translate(self, texts: str | Sequence[str], beam_size: int = 4, max_length: int = 256, min_length: int = 0,
                  length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, num_hypotheses: int = 1,
                  early_stopping: bool | str = False, repetition_penalty: float | None = None,
                  temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None, truncation: bool = False, batch_size: int = 16,
                  return_ids: bool = False, show_progress: bool = False, src_lang: str | None = None,
                  tgt_lang: str | None = None) -> str | list:
        """Translate each text; one string gives one result, a list gives a list (in input order).

        ``beam_size`` > 1 runs beam search with transformers' semantics (``length_penalty``,
        ``early_stopping``, ``no_repeat_ngram_size``, ``repetition_penalty``); ``beam_size=1`` decodes
        greedily, or samples when ``temperature`` > 0 (``top_k``, ``top_p``, ``seed`` as the Generator).
        ``max_length`` / ``min_length`` bound the new tokens (EOS included), as transformers'
        ``max_new_tokens`` / ``min_new_tokens``. ``num_hypotheses`` > 1 (≤ ``beam_size``) makes each
        result a list of that many, best first. A source longer than the model's ``max_positions``
        raises InputError unless ``truncation`` is set. With ``return_ids`` each result is a dict
        ``{"text", "token_ids", "finish_reason"}`` ("eos" or "length"; beam results add "score").
        Inputs run ``batch_size`` at a time; results do not depend on the batching.

        Multilingual models (``languages`` not empty) need ``tgt_lang``, the code of the language to
        translate into, forced as the first generated token; ``src_lang`` is the source text's code, put
        where the model's tokenizer puts it (default: the language the tokenizer was saved with).
        """
        single = isinstance(texts, str)
        source_code, forced = self._languages(src_lang, tgt_lang)
        params = self._params(beam_size, max_length, min_length, length_penalty, no_repeat_ngram_size,
                              num_hypotheses, early_stopping, repetition_penalty, temperature, top_k, top_p, seed,
                              forced)
        _positive_int("batch_size", batch_size)
        texts = check_texts(texts)
        sources = [self._encode(t, truncation, source_code) for t in texts]
        results = self._run(sources, params, batch_size, show_progress)
        out = [[r if return_ids else r["text"] for r in res] if num_hypotheses > 1 else
               (res[0] if return_ids else res[0]["text"]) for res in results]
        return out[0] if single else out

    def summarize(self, texts: str | Sequence[str], beam_size: int = 4, max_length: int = 142, min_length: int = 0,
                  length_penalty: float = 2.0, no_repeat_ngram_size: int = 3, early_stopping: bool | str = True,
                  truncation: bool = True, **kwargs) -> str | list:
        """``translate`` with summarisation defaults (those of BART-large-CNN's generation config: beam 4,
        length penalty 2, no repeated trigram, early stopping) and long documents truncated to the model's
        ``max_positions``. T5 needs the "summarize: " prefix in the text."""
        return self.translate(texts, beam_size=beam_size, max_length=max_length, min_length=min_length,
                              length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                              early_stopping=early_stopping, truncation=truncation, **kwargs)

    def translate_ids(self, input_ids: Sequence[Sequence[int]], beam_size: int = 4, max_length: int = 256,
                      min_length: int = 0, length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                      num_hypotheses: int = 1, early_stopping: bool | str = False,
                      repetition_penalty: float | None = None, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, seed: int | None = None, batch_size: int = 16,
                      output_logits: bool = False, tgt_lang: str | None = None) -> list:
        """``translate`` from source token ids (one list per input, special tokens included, as transformers'
        ``generate(input_ids)`` takes them). Each result is a dict ``{"token_ids", "finish_reason"}``
        (plus "score" for beam search; a list of dicts with ``num_hypotheses`` > 1); ``output_logits``
        (greedy/sampling only) adds the raw logits of every step, float32 [steps, vocab], as transformers'
        ``output_logits=True``. A multilingual model needs ``tgt_lang`` (the ids carry the source code)."""
        if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, Sequence) or not len(input_ids):
            raise InputError("input_ids must be a non-empty list of token id lists")
        _, forced = self._languages(None, tgt_lang)
        params = self._params(beam_size, max_length, min_length, length_penalty, no_repeat_ngram_size,
                              num_hypotheses, early_stopping, repetition_penalty, temperature, top_k, top_p, seed,
                              forced)
        _positive_int("batch_size", batch_size)
        sources = [self._check_ids(ids) for ids in input_ids]
        if output_logits and params.beam:
            raise InputError("output_logits is for greedy or sampled decoding (beam_size=1)")
        results = self._run(sources, params, batch_size, False, decode=False, output_logits=output_logits)
        return [res if num_hypotheses > 1 else res[0] for res in results]

    # ------------------------------------------------------------------ inputs

    def _languages(self, src_lang: str | None, tgt_lang: str | None) -> tuple[int | None, int | None]:
        """(token id of the source code or None, the forced first token) for the languages asked for."""
        codes = self.config.language_codes
        if not codes:
            if src_lang is not None or tgt_lang is not None:
                raise InputError("this model takes no language codes (src_lang / tgt_lang are for multilingual "
                                 "models such as NLLB, M2M-100 and mBART-50)")
            return None, self.config.forced_bos_token_id
        if tgt_lang is None:
            raise InputError("this model is multilingual: pass tgt_lang, the code of the language to translate into "
                             f"(one of {', '.join(sorted(codes))})")
        for name, code in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
            if code is not None and (not isinstance(code, str) or code not in codes):
                raise InputError(f"{name} {code!r:.40} is not one of the model's language codes: "
                                 f"{', '.join(sorted(codes))}")
        return (None if src_lang is None else codes[src_lang]), codes[tgt_lang]

    def _encode(self, text: str, truncation: bool, source_code: int | None = None) -> np.ndarray:
        cfg = self.config
        if source_code is None:
            encoding = self.tokenizer.encode(text)
            ids = self._model_ids(text, encoding)
            too_long = bool(encoding.overflowing)
        else:
            # The text's pieces with the code and </s> around them, as the model's tokenizer class sets its
            # template for src_lang; truncation keeps both.
            encoding = self.tokenizer.encode(text, add_special_tokens=False)
            room = cfg.max_positions - 2
            too_long = bool(encoding.overflowing) or len(encoding.ids) > room
            body = self._model_ids(text, encoding)[:room].tolist()
            eos = cfg.source_eos_token_id
            ids = np.asarray([source_code, *body, eos] if cfg.language_position == "prefix" else
                             [*body, eos, source_code], dtype=np.int64)
        if too_long and not truncation:
            raise InputError(f"a text of more than {self.config.max_positions} tokens is longer than the model "
                             "takes; shorten it or pass truncation=True")
        return self._check_ids(ids)

    def _model_ids(self, text: str, encoding) -> np.ndarray:
        """The model ids of an encoding: its ids, or for a tokenizer over SentencePiece ids (Marian, M2M-100's
        own folders) its ids through the file's id map."""
        ids = np.asarray(encoding.ids, dtype=np.int64)
        if self._source_ids is None:
            return ids
        if ids.size and ids.max() >= self._source_ids.size:
            raise InputError("the source tokenizer produced an id outside its id map")
        mapped = self._source_ids[ids].astype(np.int64)
        if self._unknown_pieces is not None:
            # Text the source pieces cannot spell may still be a vocabulary entry (MarianTokenizer's and
            # M2M100Tokenizer's lookup): the token's text, or the text under it in the source.
            unk, pieces, by_text = self._unknown_pieces
            for i in np.flatnonzero(ids == unk):
                key = text[slice(*encoding.offsets[i])] if by_text else encoding.tokens[i]
                mapped[i] = pieces.get(key, mapped[i])
        return mapped

    def _check_ids(self, ids: object) -> np.ndarray:
        if isinstance(ids, (str, bytes)):
            raise InputError("each source must be a list of token ids")
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise InputError("each source must be a non-empty list of token ids")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise InputError(f"token ids must lie in [0, {self.config.vocab_size})")
        if ids.size > self.config.max_positions:
            raise InputError(f"a source of {ids.size} tokens is longer than the model's {self.config.max_positions}")
        return ids.astype(np.int32)

    def _params(self, beam_size: int, max_length: int, min_length: int, length_penalty: float,
                no_repeat_ngram_size: int, num_hypotheses: int, early_stopping: bool | str,
                repetition_penalty: float | None, temperature: float, top_k: int | None, top_p: float | None,
                seed: int | None, forced_bos_token_id: int | None) -> GenerationParams:
        """The engine's settings from translate()'s names, with the constraints the checkpoint sets."""
        cfg = self.config
        _positive_int("max_length", max_length)
        if cfg.max_positions < 2:
            raise InputError("the model has no room for a decoded token")
        return GenerationParams(
            max_new_tokens=max_length, min_new_tokens=min_length, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size, num_beams=beam_size,
            length_penalty=length_penalty, early_stopping=early_stopping, num_return_sequences=num_hypotheses,
            seed=seed, bad_token_ids=cfg.bad_token_ids, forced_bos_token_id=forced_bos_token_id,
            forced_eos_token_id=cfg.forced_eos_token_id).validate(_NAMES)

    # ------------------------------------------------------------------ decoding

    def _run(self, sources: list[np.ndarray], params: GenerationParams, batch_size: int, show_progress: bool,
             decode: bool = True, output_logits: bool = False) -> list[list[dict]]:
        cfg = self.config
        # The start token takes position 0, so max_positions − 1 tokens can follow it.
        budget = min(params.max_new_tokens, cfg.max_positions - 1)
        start = [cfg.decoder_start_token_id]
        if params.beam:
            searches = [BeamSearch(start, budget, cfg.eos_token_ids, params) for _ in sources]
        else:
            searches = [SampleSearch(start, budget, cfg.eos_token_ids, params,
                                     np.random.default_rng(None if params.seed is None else [params.seed, i]),
                                     keep_logits=output_logits) for i in range(len(sources))]
        blocks, rows = min(batch_size, len(sources)), params.num_beams
        state = KVCache(cfg, blocks * rows, budget, blocks, max(len(s) for s in sources), self._model.kv_dtype)
        stepper = _Seq2SeqStepper(self._model, sources, cfg.decoder_start_token_id, state, rows, self.threads)
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(sources), unit="text", desc="translating")
        try:
            finished = 0
            for _ in decode_all(stepper, searches, blocks, rows):
                if bar is not None:
                    done = sum(s.done for s in searches)
                    bar.update(done - finished)
                    finished = done
        finally:
            if bar is not None:
                bar.close()
        eos = set(cfg.eos_token_ids)
        results = []
        for search in searches:
            hyps = search.results()
            for hyp in hyps:
                ids = hyp["token_ids"]
                hyp["finish_reason"] = "eos" if ids and ids[-1] in eos else "length"
                if ids and ids[-1] in eos:
                    del ids[-1]
                if decode:
                    hyp["text"] = self._decoder.decode(ids, skip_special_tokens=True)
            results.append(hyps)
        return results

    def __repr__(self) -> str:
        cfg = self.config
        return (f"{type(self).__name__}(path={str(self.path)!r}, architecture={cfg.family!r}, "
                f"quantization={self.quantization!r}, layers={cfg.num_encoder_layers}+{cfg.num_decoder_layers}, "
                f"hidden={cfg.hidden_size}, threads={self.threads})")


class _Seq2SeqStepper:
    """The encoder-decoder model as the generation driver's Stepper: block b is decoder slots b·n … b·n + n − 1
    and source b; a prefill encodes the sources of the inputs it admits (packed, one encoder call), writes
    their cross-attention keys/values into their blocks' sources and runs the decoder start token."""

    def __init__(self, model: Seq2SeqModel, sources: list[np.ndarray], start: int, state: KVCache,
                 rows_per_block: int, threads: int) -> None:
        self.model, self.sources, self.start, self.state = model, sources, start, state
        self.rows_per_block, self.threads = rows_per_block, threads

    def prefill(self, inputs: Sequence[int], blocks: Sequence[int]) -> np.ndarray:
        chunk = [self.sources[i] for i in inputs]
        starts = np.zeros(len(chunk) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in chunk], out=starts[1:])
        blocks = np.asarray(blocks, dtype=np.int32)
        state = self.state
        with numba_threads(self.threads):
            hidden = self.model.encode(np.concatenate(chunk), starts)
            self.model.write_sources(state, hidden, starts, blocks)
            k = len(chunk)
            return self.model.step(state, np.full(k, self.start, dtype=np.int32), blocks * self.rows_per_block,
                                   np.zeros(k, dtype=np.int32), blocks)

    def step(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        with numba_threads(self.threads):
            return self.model.step(self.state, tokens, slots, positions, blocks)

    def copy_slots(self, dest: np.ndarray, src: np.ndarray, upto: int) -> None:
        with numba_threads(self.threads):
            self.state.copy_slots(dest, src, upto)
