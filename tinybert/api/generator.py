"""``Generator``: text generation with a decoder-only model (GPT-2, Llama family)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..config import DecoderConfig
from ..errors import InputError
from ..generation import BeamSearch, GenerationParams, IncrementalDecoder, SampleSearch, StopMatcher, decode, run_all
from ..layers import KVCache
from ..models.decoder import DecoderModel
from ..tokenizer import check_texts
from .chat import ChatTemplate
from .opening import OpenedModel, open_model
from .scheduler import numba_threads


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


class Generator(OpenedModel):
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

    def __init__(self, path: str | Path, threads: int | None = None, *, dtype: str = "int8",
                 revision: str | None = None, local_files_only: bool | None = None) -> None:
        opened = open_model(path, "decoder", threads, "Generator", dtype=dtype, revision=revision,
                           local_files_only=local_files_only)
        self._take(opened)
        self.config: DecoderConfig
        self._model = DecoderModel(self.config, opened.tensors)
        self._chat_settings: dict | None = opened.file.chat_template
        self._chat_template: ChatTemplate | None = None      # compiled on first use

    # ------------------------------------------------------------------ public API

    @property
    def chat_template(self) -> str | None:
        """The file's chat template (Jinja text, from the checkpoint), or None when it has none."""
        return None if self._chat_settings is None else self._chat_settings["template"]

    def kv_cache_bytes(self, batch: int, length: int) -> int:
        """Bytes of the KV cache for ``batch`` sequences of up to ``length`` tokens (float16 keys and values
        for an int8 model, float32 for a float32 one)."""
        return KVCache.bytes_for(self.config, batch, min(length, self.config.max_positions),
                                 dtype=self._model.kv_dtype)

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                 stop: Sequence[str] | None = None, seed: int | None = None, num_beams: int = 1,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, early_stopping: bool | str = False,
                 num_return_sequences: int = 1, return_ids: bool = False, min_new_tokens: int = 0,
                 min_p: float | None = None, batch_size: int = 16) -> str | list | dict:
        """Continue each prompt; returns the generated text (without the prompt) per prompt.

        One string gives one result, a list gives a list. With ``return_ids`` each result is a
        dict ``{"text", "token_ids", "finish_reason"}`` (finish_reason: "eos", "stop" or
        "length"). Generation ends at an EOS token, at a ``stop`` string (the text is cut where
        it starts, and it is not included), after ``max_new_tokens``, or at the end of the
        model's context. A prompt longer than the context raises InputError.

        Settings are transformers' ``generate`` names and meanings: ``temperature`` > 0 samples
        (after ``top_k``, ``top_p``, ``min_p``; ``seed`` makes draws reproducible), ``num_beams`` > 1
        runs beam search (``length_penalty``, ``early_stopping``; with ``num_return_sequences`` > 1
        each prompt's result is a list of that many, best first); ``repetition_penalty``,
        ``no_repeat_ngram_size`` and ``min_new_tokens`` apply to every search. Prompts are decoded
        ``batch_size`` at a time, a finished one's place taken at once by the next (memory is bounded
        by ``batch_size``, not by the number of prompts); a prompt's result never depends on the
        others, nor on ``batch_size`` (each prompt draws from its own random stream, seeded by
        ``seed`` and its index).
        """
        single = isinstance(prompts, str)
        params = GenerationParams(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                  temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                  num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                                  num_return_sequences=num_return_sequences, seed=seed).validate()
        stops = self._stops(stop)
        _positive_int("batch_size", batch_size)
        encoded = [self._encode(p) for p in check_texts(prompts)]
        results = self._run(encoded, params, stops, batch_size)
        out = [[h if return_ids else h["text"] for h in hyps] if num_return_sequences > 1 else
               (hyps[0] if return_ids else hyps[0]["text"]) for hyps in results]
        return out[0] if single else out

    def generate_ids(self, input_ids: Sequence[Sequence[int]], max_new_tokens: int = 64,
                     output_logits: bool = False, **kwargs) -> list:
        """As ``generate`` but from token ids (one list per prompt, no padding): what transformers'
        ``generate(input_ids)`` takes; results always carry ``token_ids``, and with
        ``output_logits`` (greedy or sampling) the raw logits of every step (float32 [new tokens,
        vocab]) as transformers' ``output_logits=True``; an EOS step's logits are included.
        ``kwargs``: ``generate``'s settings (``stop``, ``batch_size``, ``num_beams``, ...)."""
        if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, (Sequence, np.ndarray)):
            raise InputError(f"input_ids must be a list of token id lists, got {type(input_ids).__name__}")
        prompts = [self._check_ids(ids) for ids in input_ids] if len(input_ids) else []
        if not prompts:
            raise InputError("input_ids is empty")
        stops = self._stops(kwargs.pop("stop", None))
        batch_size = _positive_int("batch_size", kwargs.pop("batch_size", 16))
        try:
            params = GenerationParams(max_new_tokens=max_new_tokens, **kwargs).validate()
        except TypeError as e:
            raise InputError(f"generate_ids got an unknown setting: {e}") from None
        if output_logits and params.beam:
            raise InputError("output_logits is for greedy search or sampling (num_beams=1)")
        results = self._run(prompts, params, stops, batch_size, output_logits)
        return [hyps if params.num_return_sequences > 1 else hyps[0] for hyps in results]

    def stream(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, repetition_penalty: float | None = None,
               stop: Sequence[str] | None = None, seed: int | None = None, no_repeat_ngram_size: int = 0,
               min_new_tokens: int = 0, min_p: float | None = None) -> Iterator[str]:
        """Yield the generated text of one prompt piece by piece as tokens are decoded. Pieces never
        split a UTF-8 character, and text that could still turn into a stop string is held back
        until it cannot; the pieces join to exactly what ``generate`` returns."""
        if not isinstance(prompt, str):
            raise InputError(f"stream takes one prompt string, got {type(prompt).__name__}")
        (prompt,) = check_texts(prompt)
        params = GenerationParams(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                  temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                  seed=seed).validate()
        yield from self._stream(self._encode(prompt), params, self._stops(stop))

    def chat(self, messages: Sequence[dict], add_generation_prompt: bool = True, return_ids: bool = False,
             **generate_options) -> str | list | dict:
        """The assistant's reply to ``messages`` (a list of ``{"role": str, "content": str}`` dicts, oldest
        first): the conversation rendered with the file's chat template exactly as transformers'
        ``tokenizer.apply_chat_template(messages, add_generation_prompt=...)`` renders it, tokenized as
        transformers does (no special tokens added: the template writes them), then continued as ``generate``
        continues a prompt, stopping at every EOS id the file records (generation_config.json's).

        ``generate_options``: ``generate``'s settings (``max_new_tokens``, ``temperature``, ``stop``,
        ``num_beams``, ...); ``return_ids`` as there. A file without a chat template, a malformed message or a
        template that refuses the conversation (its ``raise_exception``) raise InputError.
        """
        ids = self._chat_ids(messages, add_generation_prompt)
        result = self.generate_ids([ids], **generate_options)[0]
        pick = (lambda hyp: hyp) if return_ids else (lambda hyp: hyp["text"])
        return [pick(h) for h in result] if isinstance(result, list) else pick(result)

    def stream_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True, max_new_tokens: int = 64,
                    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                    repetition_penalty: float | None = None, stop: Sequence[str] | None = None,
                    seed: int | None = None, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
                    min_p: float | None = None) -> Iterator[str]:
        """``chat``'s reply piece by piece, as ``stream`` yields a prompt's continuation (the pieces join to
        what ``chat`` returns)."""
        params = GenerationParams(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                  temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                  seed=seed).validate()
        stops = self._stops(stop)
        yield from self._stream(self._chat_ids(messages, add_generation_prompt), params, stops)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt ``chat`` gives the model: ``messages`` rendered with the file's chat template, as
        transformers' ``apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``."""
        if self._chat_template is None:
            if self._chat_settings is None:
                raise InputError(f"{self.path.name} has no chat template (its checkpoint had none, or it was "
                                 "converted before tinybert kept them): use generate with a prompt")
            self._chat_template = ChatTemplate(self._chat_settings)
        return self._chat_template.render(messages, add_generation_prompt)

    def logits(self, input_ids: object, attention_mask: object = None) -> np.ndarray:
        """Next-token logits float32 [batch, seq, vocab] for every position, as transformers'
        ``model(input_ids, attention_mask).logits`` (for scoring and perplexity). Padding (mask 0)
        may sit on either side of each row; its logits are 0. Each row is computed alone: a longrope
        row (Phi-3) takes its long factors iff it reaches the original context, as transformers does
        for that row by itself (transformers decides for a whole padded batch)."""
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
        cache = KVCache(self.config, len(rows), max(lengths), dtype=self._model.kv_dtype)
        flat = np.concatenate(rows).astype(np.int32)
        slots = np.repeat(np.arange(len(rows), dtype=np.int32), lengths)
        positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        with numba_threads(self.threads):
            logits = self._model(flat, slots, positions, cache)
        out = np.zeros(ids.shape + (self.config.vocab_size,), dtype=np.float32)
        start = 0
        for b, n in enumerate(lengths):
            where = np.flatnonzero(mask[b])
            out[b, where] = logits[start:start + n]
            start += n
        return out

    # ------------------------------------------------------------------ validation

    @staticmethod
    def _stops(stop: Sequence[str] | None) -> list[str]:
        if stop is None:
            return []
        if isinstance(stop, str):
            stop = [stop]
        if not all(isinstance(s, str) and s for s in stop):
            raise InputError("stop must be a list of non-empty strings")
        return list(stop)

    def _chat_ids(self, messages: object, add_generation_prompt: bool) -> np.ndarray:
        return self._encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)

    def _encode(self, prompt: str, add_special_tokens: bool = True) -> np.ndarray:
        encoding = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
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

    # ------------------------------------------------------------------ decoding

    def _searches(self, prompts: list[np.ndarray], params: GenerationParams, stops: list[str],
                  output_logits: bool = False, first_index: int = 0, logprobs: int | None = None) -> list:
        """One search per prompt, its budget cut to the context; prompt i draws from the random stream
        (seed, first_index + i). ``logprobs`` (greedy or sampling): SampleSearch's."""
        eos = self.config.eos_token_ids
        matcher = StopMatcher(stops)
        stop = (lambda ids: matcher.cut(self._decode(ids)) is not None) if stops else None
        searches = []
        for i, prompt in enumerate(prompts):
            budget = min(params.max_new_tokens, self.config.max_positions - len(prompt))
            if params.beam:
                searches.append(BeamSearch(prompt, budget, eos, params))
            else:
                rng = np.random.default_rng(None if params.seed is None else [params.seed, first_index + i])
                searches.append(SampleSearch(prompt, budget, eos, params, rng, stop, output_logits, logprobs))
        return searches

    def _stepper(self, searches: list, blocks: int, rows_per_block: int) -> _DecoderStepper:
        length = max(s.plen + s.max_new_tokens for s in searches)
        cache = KVCache(self.config, blocks * rows_per_block, length, dtype=self._model.kv_dtype)
        return _DecoderStepper(self._model, [s.prefix for s in searches],
                               cache, rows_per_block, self.threads)

    def _run(self, prompts: list[np.ndarray], params: GenerationParams, stops: list[str], batch_size: int,
             output_logits: bool = False) -> list[list[dict]]:
        searches = self._searches(prompts, params, stops, output_logits)
        blocks = min(batch_size, len(searches))
        run_all(self._stepper(searches, blocks, params.num_beams), searches, blocks, params.num_beams)
        return [self._hypotheses(search, stops) for search in searches]

    def _hypotheses(self, search, stops: list[str]) -> list[dict]:
        """A finished search's results: text (cut at a stop string), token ids (without the EOS) and why each
        ended ("eos", "stop" or "length")."""
        eos = set(self.config.eos_token_ids)
        matcher = StopMatcher(stops)
        hyps = []
        for hyp in search.results():
            ids = hyp["token_ids"]
            reason = hyp.get("finish_reason", "length")
            if ids and ids[-1] in eos:
                ids, reason = ids[:-1], "eos"
            if "logprobs" in hyp:
                hyp = {**hyp, "logprobs": hyp["logprobs"][:len(ids)]}
            text = self._decode(ids)
            cut = matcher.cut(text) if stops else None
            if cut is not None:
                text, reason = text[:cut], "stop"
            hyps.append({**hyp, "text": text, "token_ids": ids, "finish_reason": reason})
        return hyps

    def _stream(self, prompt: np.ndarray, params: GenerationParams, stop: list[str]) -> Iterator[str]:
        eos = set(self.config.eos_token_ids)
        matcher = StopMatcher(stop)
        decoder = IncrementalDecoder(self._decode)
        released = 0      # characters of decoder.text already yielded
        searches = self._searches([prompt], params, stop)
        search = searches[0]
        for _ in decode(self._stepper(searches, 1, 1), searches, 1, 1):
            token = search.ids[-1]
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
        # Whatever is left, decoded exactly as generate() decodes it (held-back text, a trailing partial character).
        final = self._decode(decoder.ids)
        if len(final) > released:
            yield final[released:]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={str(self.path)!r}, architecture={self.config.architecture!r}, "
                f"quantization={self.quantization!r}, layers={self.config.num_layers}, "
                f"hidden={self.config.hidden_size}, threads={self.threads})")


class _DecoderStepper:
    """The decoder-only model as the generation driver's Stepper: block b is cache slots b·n … b·n + n − 1;
    a prefill runs whole prompts into each block's first slot.

    A model whose rotary tables switch to longrope's long factors at a position L (Phi-3 past its original
    context; layers/attention.py RotaryTables) replays: a sequence whose next token lands on L is fed again
    from position 0, in the same call, so that all of it is rotated with the long factors, as in one forward
    of the whole text. transformers' Phi-3 does the same in generate (Phi3ForCausalLM.prepare_inputs_for_generation
    drops the cache when the text reaches L + 1 tokens): every logit then equals a forward of the text before it,
    however the text was fed in. Each slot's tokens up to L are kept for that (``history``)."""

    def __init__(self, model: DecoderModel, prompts: list[np.ndarray], cache: KVCache, rows_per_block: int,
                 threads: int) -> None:
        self.model, self.prompts, self.cache = model, prompts, cache
        self.rows_per_block, self.threads = rows_per_block, threads
        switches = model.positions.switches
        self.switches = np.asarray(switches, dtype=np.int32)
        self.history = np.zeros((cache.slots, switches[-1] + 1), dtype=np.int32) if switches else None

    def prefill(self, inputs: Sequence[int], blocks: Sequence[int]) -> np.ndarray:
        prompts = [self.prompts[i] for i in inputs]
        lengths = np.array([len(p) for p in prompts])
        ids = np.concatenate(prompts).astype(np.int32)
        firsts = np.asarray(blocks, dtype=np.int32) * self.rows_per_block
        slots = np.repeat(firsts, lengths)
        positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        if self.history is not None:
            for slot, prompt in zip(firsts, prompts):
                kept = prompt[:self.history.shape[1]]
                self.history[slot, :kept.size] = kept
        with numba_threads(self.threads):
            return self.model(ids, slots, positions, self.cache, logit_rows=np.cumsum(lengths) - 1)

    def step(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        logit_rows = None
        if self.history is not None:
            tokens, slots, positions, logit_rows = self._replayed(tokens, slots, positions)
        with numba_threads(self.threads):
            return self.model(tokens, slots, positions, self.cache, logit_rows=logit_rows)

    def _replayed(self, tokens: np.ndarray, slots: np.ndarray,
                  positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The step's rows with each row that lands on a switch position preceded by its slot's earlier tokens
        (positions 0 onwards), and the rows whose logits the step returns (None: all of them)."""
        kept = positions < self.history.shape[1]
        self.history[slots[kept], positions[kept]] = tokens[kept]
        replay = np.isin(positions, self.switches)
        if not replay.any():
            return tokens, slots, positions, None
        counts = np.where(replay, positions + 1, 1)
        ids = np.concatenate([self.history[s, :p + 1] if r else t[None]
                              for t, s, p, r in zip(tokens, slots, positions, replay)])
        at = np.concatenate([np.arange(p + 1, dtype=np.int32) if r else p[None] for p, r in zip(positions, replay)])
        return ids.astype(np.int32), np.repeat(slots, counts).astype(np.int32), at, np.cumsum(counts) - 1

    def copy_slots(self, dest: np.ndarray, src: np.ndarray, upto: int) -> None:
        with numba_threads(self.threads):
            self.cache.copy_slots(dest, src, upto)
        if self.history is not None:
            width = min(upto, self.history.shape[1])
            self.history[dest, :width] = self.history[src, :width]
