"""``Generator``: text generation with a decoder-only model (GPT-2, Llama family)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .api import _check_threads, _numba_threads
from .beam import BeamParams, beam_search
from .config import DecoderConfig
from .decoder import DecoderModel, KVCache
from .errors import InputError, ModelKindError
from .generation import IncrementalDecoder, SamplingParams, StopMatcher, next_tokens
from .loader import load
from .tokenizer import check_texts, load_tokenizer


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


class Generator:
    """A decoder-only language model loaded from a tinybert file.

    >>> gen = Generator("gpt2.int8.safetensors")
    >>> gen.generate("The meaning of life is", max_new_tokens=20)
    ' ...'
    >>> for piece in gen.stream("Once upon a time", max_new_tokens=50, temperature=0.8, seed=1):
    ...     print(piece, end="", flush=True)

    Decoding is greedy unless ``temperature`` > 0 (then sampled, with optional ``top_k``,
    ``top_p``, ``repetition_penalty``, all as transformers applies them; ``seed`` makes draws
    reproducible). ``threads`` caps the Numba worker threads (default: all).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        model_file = load(path)
        if not isinstance(model_file.config, DecoderConfig):
            raise ModelKindError(f"{path} holds a {model_file.config.kind} model; Generator needs a decoder "
                                 "(GPT-2, Llama family)")
        self.path = Path(path)
        self.config: DecoderConfig = model_file.config
        self.quantization: str = model_file.quantization
        self.metadata: dict[str, str] = model_file.metadata
        self.tokenizer = load_tokenizer(model_file.tokenizer_json, self.config.max_positions)
        self.threads = _check_threads(threads)
        self._model = DecoderModel(self.config, model_file.tensors)

    # ------------------------------------------------------------------ public API

    def kv_cache_bytes(self, batch: int, length: int) -> int:
        """Bytes of the KV cache for ``batch`` sequences of up to ``length`` tokens (float32)."""
        return KVCache.bytes_for(self.config, batch, min(length, self.config.max_positions))

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                 stop: Sequence[str] | None = None, seed: int | None = None, num_beams: int = 1,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, early_stopping: bool | str = False,
                 num_return_sequences: int = 1, return_ids: bool = False) -> str | list | dict:
        """Continue each prompt; returns the generated text (without the prompt) per prompt.

        One string gives one result, a list gives a list. With ``return_ids`` each result is a
        dict ``{"text", "token_ids", "finish_reason"}`` (finish_reason: "eos", "stop" or
        "length"). Generation ends at an EOS token, at a ``stop`` string (the text is cut where
        it starts, and it is not included), after ``max_new_tokens``, or at the end of the
        model's context. A prompt longer than the context raises InputError.

        ``num_beams`` > 1 runs beam search with transformers' semantics (``length_penalty``,
        ``no_repeat_ngram_size``, ``early_stopping``, ``repetition_penalty``); with
        ``num_return_sequences`` > 1 each prompt's result is a list of that many, best first.
        Each prompt is searched on its own, so results do not depend on the batch.
        """
        single = isinstance(prompts, str)
        prompts = check_texts(prompts)
        encoded = [self._encode(p) for p in prompts]
        if num_beams == 1 and num_return_sequences == 1:
            results = self._run(encoded, max_new_tokens, self._params(
                temperature, top_k, top_p, repetition_penalty, seed), self._stops(stop), num_beams)
        else:
            if temperature or top_k is not None or top_p is not None or seed is not None:
                raise InputError("beam search is deterministic: temperature, top_k, top_p and seed do not apply")
            beam = BeamParams(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                              num_return_sequences=num_return_sequences, no_repeat_ngram_size=no_repeat_ngram_size,
                              repetition_penalty=repetition_penalty)
            beam.validate()
            results = [self._beam(p, max_new_tokens, beam, self._stops(stop)) for p in encoded]
        out = [[r if return_ids else r["text"] for r in res] if isinstance(res, list) else
               (res if return_ids else res["text"]) for res in results]
        return out[0] if single else out

    def _beam(self, prompt: np.ndarray, max_new_tokens: int, beam: BeamParams, stop: list[str]) -> dict | list:
        """Beam search for one prompt; the KV cache holds one slot per beam and follows the beams."""
        _positive_int("max_new_tokens", max_new_tokens)
        budget = min(max_new_tokens, self.config.max_positions - len(prompt))
        cache = KVCache(self.config, beam.num_beams, len(prompt) + budget)
        position = [-1]   # where the next token goes; -1 until the prompt is in the cache

        def step(tokens: np.ndarray, parents: np.ndarray) -> np.ndarray:
            with _numba_threads(self.threads):
                if position[0] < 0:
                    # first call: the whole prompt into slot 0; the search then copies it to every beam
                    position[0] = len(prompt)
                    return self._model(prompt, np.zeros(len(prompt), dtype=np.int32),
                                       np.arange(len(prompt), dtype=np.int32), cache,
                                       logit_rows=np.array([len(prompt) - 1]))
                if not np.array_equal(parents, np.arange(len(parents))):
                    # beams continue other beams: their cached keys/values follow them
                    cache.k[:, :len(parents)] = cache.k[:, parents]
                    cache.v[:, :len(parents)] = cache.v[:, parents]
                n = len(tokens)
                logits = self._model(np.asarray(tokens, dtype=np.int32), np.arange(n, dtype=np.int32),
                                     np.full(n, position[0], dtype=np.int32), cache)
                position[0] += 1
                return logits

        found = beam_search(step, prompt.tolist(), budget, tuple(self.config.eos_token_ids), beam)
        eos = set(self.config.eos_token_ids)
        matcher = StopMatcher(stop)
        results = []
        for hyp in found:
            ids = [int(t) for t in hyp["token_ids"]]
            reason = "length"
            if ids and ids[-1] in eos:
                ids, reason = ids[:-1], "eos"
            text = self._decode(ids)
            cut = matcher.cut(text) if stop else None
            if cut is not None:
                text, reason = text[:cut], "stop"
            results.append({"text": text, "token_ids": ids, "finish_reason": reason, "score": hyp["score"]})
        return results if beam.num_return_sequences > 1 else results[0]

    def generate_ids(self, input_ids: Sequence[Sequence[int]], max_new_tokens: int = 64,
                     output_logits: bool = False, **kwargs) -> list[dict]:
        """As ``generate`` but from token ids (one list per prompt, no padding): what transformers'
        ``generate(input_ids)`` takes; results always carry ``token_ids``, and with
        ``output_logits`` the raw logits of every step (float32 [new tokens, vocab]) as
        transformers' ``output_logits=True``; an EOS step's logits are included."""
        if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, (Sequence, np.ndarray)):
            raise InputError(f"input_ids must be a list of token id lists, got {type(input_ids).__name__}")
        prompts = [self._check_ids(ids) for ids in input_ids] if len(input_ids) else []
        if not prompts:
            raise InputError("input_ids is empty")
        stop = kwargs.pop("stop", None)
        num_beams = kwargs.pop("num_beams", 1)
        return self._run(prompts, max_new_tokens, self._params(**kwargs), self._stops(stop), num_beams,
                         output_logits)

    def stream(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, repetition_penalty: float | None = None,
               stop: Sequence[str] | None = None, seed: int | None = None) -> Iterator[str]:
        """Yield the generated text of one prompt piece by piece as tokens are decoded. Pieces never
        split a UTF-8 character, and text that could still turn into a stop string is held back
        until it cannot; the pieces join to exactly what ``generate`` returns."""
        if not isinstance(prompt, str):
            raise InputError(f"stream takes one prompt string, got {type(prompt).__name__}")
        (prompt,) = check_texts(prompt)
        params = self._params(temperature, top_k, top_p, repetition_penalty, seed)
        yield from self._stream(self._encode(prompt), max_new_tokens, params, self._stops(stop))

    def logits(self, input_ids: object, attention_mask: object = None) -> np.ndarray:
        """Next-token logits float32 [batch, seq, vocab] for every position, as transformers'
        ``model(input_ids, attention_mask).logits`` (for scoring and perplexity). Padding (mask 0)
        may sit on either side of each row; its logits are 0."""
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu" or ids.ndim != 2 or ids.size == 0:
            raise InputError(f"input_ids must be a non-empty 2-D integer array, got {ids.dtype} {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape or mask.dtype.kind not in "iub" or not np.isin(mask, (0, 1)).all():
            raise InputError("attention_mask must be a 0/1 array shaped like input_ids")
        rows = []
        for b in range(ids.shape[0]):
            where = np.flatnonzero(mask[b])
            if where.size == 0 or where[-1] - where[0] + 1 != where.size:
                raise InputError(f"row {b}: the attention mask must be one contiguous run of ones")
            rows.append(self._check_ids(ids[b, where]))
        lengths = [len(r) for r in rows]
        cache = KVCache(self.config, len(rows), max(lengths))
        flat = np.concatenate(rows).astype(np.int32)
        slots = np.repeat(np.arange(len(rows), dtype=np.int32), lengths)
        positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        with _numba_threads(self.threads):
            logits = self._model(flat, slots, positions, cache)
        out = np.zeros(ids.shape + (self.config.vocab_size,), dtype=np.float32)
        start = 0
        for b, n in enumerate(lengths):
            where = np.flatnonzero(mask[b])
            out[b, where] = logits[start:start + n]
            start += n
        return out

    # ------------------------------------------------------------------ validation

    def _params(self, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                repetition_penalty: float | None = None, seed: int | None = None) -> SamplingParams:
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty, seed)
        params.validate()
        return params

    @staticmethod
    def _stops(stop: Sequence[str] | None) -> list[str]:
        if stop is None:
            return []
        if isinstance(stop, str):
            stop = [stop]
        if not all(isinstance(s, str) and s for s in stop):
            raise InputError("stop must be a list of non-empty strings")
        return list(stop)

    def _encode(self, prompt: str) -> np.ndarray:
        encoding = self.tokenizer.encode(prompt)
        if encoding.overflowing:
            raise InputError(f"the prompt is longer than the model's context of {self.config.max_positions} "
                             "tokens; shorten it")
        if not encoding.ids:
            raise InputError("the prompt encodes to no tokens")
        return self._check_ids(encoding.ids)

    def _check_ids(self, ids: object) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise InputError("each prompt must be a non-empty list of token ids")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise InputError(f"token ids must lie in [0, {self.config.vocab_size})")
        if ids.size >= self.config.max_positions:
            raise InputError(f"a prompt of {ids.size} tokens leaves no room in the context of "
                             f"{self.config.max_positions}")
        return ids.astype(np.int32)

    # ------------------------------------------------------------------ decoding loop

    def _steps(self, prompts: list[np.ndarray], max_new_tokens: int,
               params: SamplingParams) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (sequence indices, their next tokens, the logits they came from) per step; the
        caller says which sequences finished by sending their indices back."""
        _positive_int("max_new_tokens", max_new_tokens)
        lengths = np.array([len(p) for p in prompts])
        budget = np.minimum(max_new_tokens, self.config.max_positions - lengths)
        cache = KVCache(self.config, len(prompts), int((lengths + budget).max()))
        rng = np.random.default_rng(params.seed)
        seen = [p.astype(np.int64) for p in prompts]
        active = np.arange(len(prompts))
        # Prefill: every prompt token at once, logits only at each prompt's last token.
        ids = np.concatenate(prompts).astype(np.int32)
        slots = np.repeat(np.arange(len(prompts), dtype=np.int32), lengths)
        positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        last = np.cumsum(lengths) - 1
        produced = np.zeros(len(prompts), dtype=np.int64)
        with _numba_threads(self.threads):
            logits = self._model(ids, slots, positions, cache, logit_rows=last)
        while True:
            tokens = next_tokens(logits, [seen[i] for i in active], params, rng)
            finished = yield active, tokens, logits
            produced[active] += 1
            for i, t in zip(active, tokens):
                seen[i] = np.append(seen[i], t)
            keep = np.array([i not in (finished or ()) and produced[i] < budget[i] for i in active], dtype=bool)
            active, tokens = active[keep], tokens[keep]
            if active.size == 0:
                return
            step_positions = (lengths[active] + produced[active] - 1).astype(np.int32)
            with _numba_threads(self.threads):
                logits = self._model(tokens.astype(np.int32), active.astype(np.int32), step_positions, cache)

    def _run(self, prompts: list[np.ndarray], max_new_tokens: int, params: SamplingParams, stop: list[str],
             num_beams: int, output_logits: bool = False) -> list[dict]:
        if num_beams != 1:
            raise InputError("generate_ids runs greedy search or sampling (num_beams=1); use generate for beams")
        eos = set(self.config.eos_token_ids)
        matcher = StopMatcher(stop)
        out_ids: list[list[int]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        texts: list[str | None] = [None] * len(prompts)
        step_logits: list[list[np.ndarray]] = [[] for _ in prompts]
        steps = self._steps(prompts, max_new_tokens, params)
        try:
            active, tokens, logits = next(steps)
            while True:
                finished = []
                for row, (i, t) in enumerate(zip(active, tokens)):
                    if output_logits:
                        step_logits[i].append(logits[row])
                    if int(t) in eos:
                        reasons[i] = "eos"
                        finished.append(i)
                        continue
                    out_ids[i].append(int(t))
                    if stop:
                        text = self._decode(out_ids[i])
                        cut = matcher.cut(text)
                        if cut is not None:
                            texts[i], reasons[i] = text[:cut], "stop"
                            finished.append(i)
                active, tokens, logits = steps.send(finished)
        except StopIteration:
            pass
        results = [{"text": texts[i] if texts[i] is not None else self._decode(out_ids[i]),
                    "token_ids": out_ids[i], "finish_reason": reasons[i]} for i in range(len(prompts))]
        if output_logits:
            for r, rows in zip(results, step_logits):
                r["logits"] = np.stack(rows)
        return results

    def _stream(self, prompt: np.ndarray, max_new_tokens: int, params: SamplingParams,
                stop: list[str]) -> Iterator[str]:
        eos = set(self.config.eos_token_ids)
        matcher = StopMatcher(stop)
        decoder = IncrementalDecoder(self._decode)
        released = 0      # characters of decoder.text already yielded
        steps = self._steps([prompt], max_new_tokens, params)
        try:
            _, tokens, _ = next(steps)
            while True:
                token = int(tokens[0])
                if token in eos:
                    break
                decoder.push(token)
                text = decoder.text
                cut = matcher.cut(text) if stop else None
                if cut is not None:
                    if cut > released:
                        yield text[released:cut]
                    return
                safe = len(text) - (matcher.holdback(text) if stop else 0)
                if safe > released:
                    yield text[released:safe]
                    released = safe
                _, tokens, _ = steps.send([])
        except StopIteration:
            pass
        # Whatever is left, decoded exactly as generate() decodes it (held-back text, a trailing partial character).
        final = self._decode(decoder.ids)
        if len(final) > released:
            yield final[released:]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
