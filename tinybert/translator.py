"""``Translator``: translation and summarisation with an encoder-decoder model (T5, BART, Marian).

A batch of inputs runs as one model batch: the encoder on the packed sources (no padding), then one
decoder step per new token for every unfinished input at once. Each input keeps its own search (greedy,
sampled, or a ``BeamSearch`` of tinybert/beam.py) and its own cache slots, and every kernel computes each
row from that row alone, so an input's output never depends on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .api import _check_threads, _numba_threads
from .beam import MAX_BEAMS, BeamParams, BeamSearch, banned_ngram_tokens
from .config import Seq2SeqConfig
from .errors import InputError, ModelKindError
from .generation import SamplingParams, next_tokens
from .loader import load
from .seq2seq import DecoderState, Seq2SeqModel
from .tokenizer import Decoder, check_texts, load_tokenizer


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class _Settings:
    beam: BeamParams | None          # None: greedy or sampled, one hypothesis
    sampling: SamplingParams
    max_new_tokens: int
    min_new_tokens: int
    no_repeat_ngram_size: int


class Translator:
    """An encoder-decoder model loaded from a tinybert file.

    >>> tr = Translator("opus-mt-en-de.int8.safetensors")
    >>> tr.translate(["Hello world.", "How are you?"])
    ['Hallo Welt.', 'Wie geht es dir?']
    >>> Translator("t5-small.int8.safetensors").translate("translate English to German: Thank you.")
    'Vielen Dank.'

    T5 takes its task as a text prefix, written by the caller ("translate English to German: ",
    "summarize: "). ``threads`` caps the Numba worker threads (default: all).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        model_file = load(path)
        if not isinstance(model_file.config, Seq2SeqConfig):
            raise ModelKindError(f"{path} holds a {model_file.config.kind} model; Translator needs an "
                                 "encoder-decoder (T5, BART, Marian)")
        self.path = Path(path)
        self.config: Seq2SeqConfig = model_file.config
        self.quantization: str = model_file.quantization
        self.metadata: dict[str, str] = model_file.metadata
        self.threads = _check_threads(threads)
        self.tokenizer = load_tokenizer(model_file.tokenizer_json, self.config.max_positions)
        self._source_ids = model_file.source_id_map
        self._unknown_pieces = model_file.source_unknown_pieces
        clean_up = model_file.tokenizer_options["clean_up_tokenization_spaces"]
        target = model_file.target_tokenizer_json
        self._decoder = Decoder(load_tokenizer(target, self.config.max_positions) if target else self.tokenizer,
                                clean_up)
        self._model = Seq2SeqModel(self.config, model_file.tensors)

    # ------------------------------------------------------------------ public API

    def translate(self, texts: str | Sequence[str], beam_size: int = 4, max_length: int = 256, min_length: int = 0,
                  length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, num_hypotheses: int = 1,
                  early_stopping: bool | str = False, repetition_penalty: float | None = None,
                  temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None, truncation: bool = False, batch_size: int = 16,
                  return_ids: bool = False, show_progress: bool = False) -> str | list:
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
        """
        single = isinstance(texts, str)
        texts = check_texts(texts)
        sources = [self._encode(t, truncation) for t in texts]
        results = self._run(sources, beam_size, max_length, min_length, length_penalty, no_repeat_ngram_size,
                            num_hypotheses, early_stopping, repetition_penalty, temperature, top_k, top_p, seed,
                            batch_size, show_progress)
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
                      output_logits: bool = False) -> list:
        """``translate`` from source token ids (one list per input, special tokens included, as transformers'
        ``generate(input_ids)`` takes them). Each result is a dict ``{"token_ids", "finish_reason"}``
        (plus "score" for beam search; a list of dicts with ``num_hypotheses`` > 1); ``output_logits``
        (greedy/sampling only) adds the raw logits of every step, float32 [steps, vocab], as transformers'
        ``output_logits=True``."""
        if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, Sequence) or not len(input_ids):
            raise InputError("input_ids must be a non-empty list of token id lists")
        sources = [self._check_ids(ids) for ids in input_ids]
        if output_logits and (beam_size != 1 or num_hypotheses != 1):
            raise InputError("output_logits is for greedy or sampled decoding (beam_size=1)")
        results = self._run(sources, beam_size, max_length, min_length, length_penalty, no_repeat_ngram_size,
                            num_hypotheses, early_stopping, repetition_penalty, temperature, top_k, top_p, seed,
                            batch_size, False, decode=False, output_logits=output_logits)
        return [res if num_hypotheses > 1 else res[0] for res in results]

    # ------------------------------------------------------------------ inputs

    def _encode(self, text: str, truncation: bool) -> np.ndarray:
        encoding = self.tokenizer.encode(text)
        if encoding.overflowing and not truncation:
            raise InputError(f"a text of more than {self.config.max_positions} tokens is longer than the model "
                             "takes; shorten it or pass truncation=True")
        ids = np.asarray(encoding.ids, dtype=np.int64)
        if self._source_ids is not None:
            if ids.size and ids.max() >= self._source_ids.size:
                raise InputError("the source tokenizer produced an id outside its id map")
            mapped = self._source_ids[ids]
            if self._unknown_pieces is not None:
                # Text the source pieces cannot spell may still be a vocabulary entry (MarianTokenizer's lookup).
                unk, pieces = self._unknown_pieces
                for i in np.flatnonzero(ids == unk):
                    mapped[i] = pieces.get(encoding.tokens[i], mapped[i])
            ids = mapped
        return self._check_ids(ids)

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

    def _settings(self, beam_size: int, max_length: int, min_length: int, length_penalty: float,
                  no_repeat_ngram_size: int, num_hypotheses: int, early_stopping: bool | str,
                  repetition_penalty: float | None, temperature: float, top_k: int | None, top_p: float | None,
                  seed: int | None) -> _Settings:
        if _positive_int("beam_size", beam_size) > MAX_BEAMS:
            raise InputError(f"beam_size must be at most {MAX_BEAMS}, got {beam_size}")
        _positive_int("max_length", max_length)
        _positive_int("num_hypotheses", num_hypotheses)
        for name, value in (("min_length", min_length), ("no_repeat_ngram_size", no_repeat_ngram_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"{name} must be an integer ≥ 0, got {value!r}")
        sampling = SamplingParams(temperature, top_k, top_p, repetition_penalty, seed)
        sampling.validate()
        cfg = self.config
        # The start token takes position 0, so max_positions − 1 tokens can follow it.
        max_new = min(max_length, cfg.max_positions - 1)
        if max_new < 1:
            raise InputError("the model has no room for a decoded token")
        beam = None
        if beam_size > 1 or num_hypotheses > 1:
            if not sampling.greedy or top_k is not None or top_p is not None or seed is not None:
                raise InputError("beam search is deterministic: temperature, top_k, top_p and seed do not apply")
            beam = BeamParams(num_beams=beam_size, length_penalty=length_penalty, early_stopping=early_stopping,
                              num_return_sequences=num_hypotheses, no_repeat_ngram_size=no_repeat_ngram_size,
                              min_new_tokens=min_length, repetition_penalty=repetition_penalty,
                              forced_bos_token_id=cfg.forced_bos_token_id,
                              forced_eos_token_id=cfg.forced_eos_token_id, bad_token_ids=cfg.bad_token_ids)
            beam.validate()
        else:
            BeamParams(num_beams=1, length_penalty=length_penalty, early_stopping=early_stopping).validate()
        return _Settings(beam, sampling, max_new, min_length, no_repeat_ngram_size)

    # ------------------------------------------------------------------ decoding

    def _run(self, sources: list[np.ndarray], beam_size: int, max_length: int, min_length: int,
             length_penalty: float, no_repeat_ngram_size: int, num_hypotheses: int, early_stopping: bool | str,
             repetition_penalty: float | None, temperature: float, top_k: int | None, top_p: float | None,
             seed: int | None, batch_size: int, show_progress: bool, decode: bool = True,
             output_logits: bool = False) -> list[list[dict]]:
        settings = self._settings(beam_size, max_length, min_length, length_penalty, no_repeat_ngram_size,
                                  num_hypotheses, early_stopping, repetition_penalty, temperature, top_k, top_p,
                                  seed)
        _positive_int("batch_size", batch_size)
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(sources), unit="text", desc="translating")
        rng = np.random.default_rng(settings.sampling.seed)
        results: list[list[dict]] = []
        try:
            for begin in range(0, len(sources), batch_size):
                chunk = sources[begin:begin + batch_size]
                with _numba_threads(self.threads):
                    if settings.beam is None:
                        found = self._sample(chunk, settings, rng, output_logits)
                    else:
                        found = self._beam(chunk, settings)
                results.extend(found)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        eos = set(self.config.eos_token_ids)
        for hyps in results:
            for hyp in hyps:
                ids = hyp["token_ids"]
                hyp["finish_reason"] = "eos" if ids and ids[-1] in eos else "length"
                if ids and ids[-1] in eos:
                    del ids[-1]
                if decode:
                    hyp["text"] = self._decoder.decode(ids, skip_special_tokens=True)
        return results

    def _encoder_pass(self, chunk: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        starts = np.zeros(len(chunk) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in chunk], out=starts[1:])
        return self._model.encode(np.concatenate(chunk), starts), starts

    def _constrain(self, logits: np.ndarray, history: list[list[int]], t: int, settings: _Settings) -> np.ndarray:
        """What generate()'s logits processors do before a greedy or sampled pick: no repeated n-gram, bad
        tokens, no EOS before ``min_length``, forced first / last tokens (the repetition penalty and the
        sampling warpers follow in next_tokens)."""
        cfg = self.config
        logits = np.array(logits, dtype=np.float32)
        if settings.no_repeat_ngram_size:
            for r, seq in enumerate(history):
                logits[r, banned_ngram_tokens(np.asarray(seq), settings.no_repeat_ngram_size)] = -np.inf
        bad = sorted(set(cfg.bad_token_ids) - set(cfg.eos_token_ids))
        if bad:
            logits[:, bad] = -np.inf
        if t < settings.min_new_tokens and cfg.eos_token_ids:
            logits[:, list(cfg.eos_token_ids)] = -np.inf
        if cfg.forced_bos_token_id is not None and t == 0:
            logits[:] = -np.inf
            logits[:, cfg.forced_bos_token_id] = 0.0
        if cfg.forced_eos_token_id is not None and t == settings.max_new_tokens - 1:
            logits[:] = -np.inf
            logits[:, cfg.forced_eos_token_id] = 0.0
        return logits

    def _sample(self, chunk: list[np.ndarray], settings: _Settings, rng: np.random.Generator,
                output_logits: bool) -> list[list[dict]]:
        """Greedy or sampled decoding: one cache slot per input, finished inputs leave the batch."""
        cfg, model = self.config, self._model
        hidden, starts = self._encoder_pass(chunk)
        state = model.start(hidden, starts, length=settings.max_new_tokens)
        eos = set(cfg.eos_token_ids)
        history = [[cfg.decoder_start_token_id] for _ in chunk]
        logits_out: list[list[np.ndarray]] = [[] for _ in chunk]
        active = np.arange(len(chunk))
        for t in range(settings.max_new_tokens):
            tokens = np.array([history[i][-1] for i in active], dtype=np.int32)
            rows = active.astype(np.int32)
            logits = model.step(state, tokens, rows, np.full(active.size, t, dtype=np.int32))
            if output_logits:
                for k, i in enumerate(active):
                    logits_out[i].append(logits[k].copy())
            scores = self._constrain(logits, [history[i] for i in active], t, settings)
            picks = next_tokens(scores, [np.asarray(history[i]) for i in active], settings.sampling, rng)
            keep = []
            for i, token in zip(active, picks):
                history[i].append(int(token))
                keep.append(int(token) not in eos)
            active = active[np.asarray(keep, dtype=bool)]
            if active.size == 0:
                break
        results = []
        for i, seq in enumerate(history):
            hyp = {"token_ids": seq[1:]}
            if output_logits:
                hyp["logits"] = np.stack(logits_out[i])
            results.append([hyp])
        return results

    def _beam(self, chunk: list[np.ndarray], settings: _Settings) -> list[list[dict]]:
        """Beam search for every input at once: input b owns cache slots b·n … b·n + n − 1 (n = beam size).

        A search says which of its previous rows each new row continues; a row keeps its parent's slot when
        it is the first to claim it, otherwise its parent's cached positions are copied into a slot nobody
        continues, so a step copies only what beams duplicated."""
        cfg, model, nb = self.config, self._model, settings.beam.num_beams
        hidden, starts = self._encoder_pass(chunk)
        state: DecoderState = model.start(hidden, starts, length=settings.max_new_tokens, slots=len(chunk) * nb)
        searches = [BeamSearch([cfg.decoder_start_token_id], settings.max_new_tokens, cfg.eos_token_ids,
                               settings.beam) for _ in chunk]
        slots = [np.array([b * nb]) for b in range(len(chunk))]     # physical slot of each search row
        t = 0
        while True:
            active = [b for b, s in enumerate(searches) if not s.done]
            if not active:
                break
            dest, src = [], []
            for b in active:
                search = searches[b]
                if t > 0:
                    slots[b] = _follow(slots[b], search.parents, b * nb, nb, dest, src)
            state.copy_slots(np.asarray(dest, dtype=np.int64), np.asarray(src, dtype=np.int64), t)
            tokens = np.concatenate([searches[b].tokens for b in active]).astype(np.int32)
            rows = np.concatenate([slots[b] for b in active]).astype(np.int32)
            sources = np.concatenate([np.full(searches[b].rows, b) for b in active]).astype(np.int32)
            logits = model.step(state, tokens, rows, np.full(tokens.size, t, dtype=np.int32), sources)
            offset = 0
            for b in active:
                n = searches[b].rows
                searches[b].advance(logits[offset:offset + n])
                offset += n
            t += 1
        return [s.results() for s in searches]


def _follow(current: np.ndarray, parents: np.ndarray, first: int, n: int, dest: list, src: list) -> np.ndarray:
    """Physical slots for rows that continue ``parents`` (rows of the previous step, living in slots
    ``current``) within the slot block first … first + n − 1; the copies needed go to dest/src."""
    new = np.full(parents.size, -1, dtype=np.int64)
    claimed = set()
    for i, p in enumerate(parents):
        slot = int(current[p])
        if slot not in claimed:
            claimed.add(slot)
            new[i] = slot
    # Slots nobody continues hold nothing a row still needs: the duplicates go there.
    free = iter(s for s in range(first, first + n) if s not in claimed)
    for i, p in enumerate(parents):
        if new[i] < 0:
            new[i] = next(free)
            dest.append(int(new[i]))
            src.append(int(current[p]))
    return new
