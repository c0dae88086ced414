"""Continuous batching for a server: generation requests join a running batch at its next step and leave it when
they end, on the one generation driver (generation/driver.py), in a thread of their own.

    live = LiveBatch(generator, parallel=8, context=4096)
    job = live.submit(prompt_ids, GenerationParams(max_new_tokens=64), stops=[], on_event=callback)
    ...                      # callback(("text", piece)) as text is decoded, then callback(("done", result))
    job.cancel()             # a client went away: its slot is freed at the next step

The cache is made once: ``parallel`` slots of ``context`` positions. A request's result is what
``Generator.generate`` gives for the same prompt and settings (greedy or sampled with ``seed``; choice ``index``
draws from the stream a prompt at that index of a ``generate`` call would): every kernel computes a row from
that row alone, so joining a batch changes nothing. The streamed pieces join to exactly the final text.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, TinyBertError
from ..generation import GenerationParams, IncrementalDecoder, StopMatcher, decode
from ..layers import KVCache
from .generator import Generator, _DecoderStepper

Event = tuple[str, object]      # ("text", str) pieces, then ("done", dict) or ("error", str)


class QueueFull(TinyBertError):
    """More requests are waiting than the batch was told to hold."""


class _Finished:
    """What replaces a finished search in the driver's list, so that a long busy run does not keep them all."""

    done = True


@dataclass
class Job:
    """One request in the batch."""

    prompt: np.ndarray
    params: GenerationParams
    stops: list[str]
    on_event: Callable[[Event], None]
    index: int = 0
    cancelled: bool = False
    released: int = 0                       # characters of text already sent
    decoder: IncrementalDecoder | None = None
    matcher: StopMatcher = field(default_factory=lambda: StopMatcher([]))
    seen: int = 0                           # generated tokens already read
    logprobs: int | None = None             # SampleSearch's: the chosen tokens' and the k best log-probabilities

    def cancel(self) -> None:
        """Stop this request: it leaves the batch at the next step, and no more events come."""
        self.cancelled = True


class LiveBatch:
    """A decoder's requests decoded together, joining and leaving at every step (module docstring)."""

    def __init__(self, generator: Generator, parallel: int = 8, context: int | None = None,
                 max_waiting: int = 64) -> None:
        if not isinstance(parallel, int) or parallel < 1:
            raise InputError(f"parallel must be a positive integer, got {parallel!r}")
        self.gen, self.parallel, self.max_waiting = generator, parallel, max_waiting
        limit = generator.config.max_positions
        self.context = min(limit, context or limit)
        self._cache = KVCache(generator.config, parallel, self.context, dtype=generator._model.kv_dtype)
        self._incoming: list[Job] = []
        self._active = 0                      # jobs taken into the batch and not finished
        self._cond = threading.Condition()
        self._closed = False
        self.on_step: Callable[[int], None] = lambda rows: None     # sequences each decoding step fed
        self._thread = threading.Thread(target=self._loop, name="tinybert-live-batch", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Requests not yet in the batch."""
        return len(self._incoming)

    @property
    def active(self) -> int:
        """Requests in the batch (decoding, or admitted and waiting for a slot)."""
        return self._active

    def submit(self, prompt: np.ndarray, params: GenerationParams, stops: list[str],
               on_event: Callable[[Event], None], index: int = 0, logprobs: int | None = None) -> Job:
        """Queue a request (``params``: greedy or sampling, num_beams 1); QueueFull when max_waiting are waiting.
        InputError for a prompt that leaves no room in the context. ``logprobs`` (k ≥ 0): the result carries
        "logprobs", each generated token's log-probability and the k most likely (SampleSearch)."""
        prompt = self.gen._check_ids(prompt)
        if params.num_beams != 1 or params.num_return_sequences != 1:
            raise InputError("a live batch runs greedy search or sampling, one sequence a request")
        if prompt.size >= self.context:
            raise InputError(f"a prompt of {prompt.size} tokens leaves no room in the served context of "
                             f"{self.context}")
        job = Job(prompt, params, list(stops), on_event, index, matcher=StopMatcher(list(stops)), logprobs=logprobs)
        job.decoder = IncrementalDecoder(self.gen._decode)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._incoming) >= self.max_waiting:
                raise QueueFull(f"{len(self._incoming)} requests are waiting already")
            self._incoming.append(job)
            self._cond.notify()
        return job

    def close(self, timeout: float | None = None) -> None:
        """Take no more requests; let the ones taken finish (up to ``timeout`` seconds)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the decoding thread

    def _take(self, searches: list, prompts: list, jobs: list) -> None:
        with self._cond:
            taken, self._incoming = self._incoming, []
            self._active += len(taken)
        for job in taken:
            budget = min(job.params.max_new_tokens, self.context - job.prompt.size)
            params = dataclasses.replace(job.params, max_new_tokens=budget)
            (search,) = self.gen._searches([job.prompt], params, job.stops, first_index=job.index,
                                           logprobs=job.logprobs)
            searches.append(search)
            prompts.append(job.prompt)
            jobs.append(job)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._incoming and not self._closed:
                    self._cond.wait()
                if not self._incoming:
                    return
            searches: list = []
            prompts: list = []
            jobs: list[Job | None] = []
            stepper = _DecoderStepper(self.gen._model, prompts, self._cache, 1, self.gen.threads)
            self._take(searches, prompts, jobs)
            try:
                for advanced in decode(stepper, searches, self.parallel, 1):
                    self.on_step(len(advanced))
                    for i in advanced:
                        self._advance(i, searches, prompts, jobs)
                    for i, job in enumerate(jobs):
                        if job is not None and job.cancelled:
                            self._finish(i, searches, prompts, jobs, send=False)
                    self._take(searches, prompts, jobs)
            except Exception as exc:      # a kernel or model error: every request taken hears of it
                for i, job in enumerate(jobs):
                    if job is not None:
                        job.on_event(("error", f"{type(exc).__name__}: {exc}"))
                        self._finish(i, searches, prompts, jobs, send=False)

    def _advance(self, i: int, searches: list, prompts: list, jobs: list) -> None:
        job, search = jobs[i], searches[i]
        if job is None:
            return
        eos = self.gen.config.eos_token_ids
        for token in search.ids[job.seen:]:
            job.seen += 1
            if token in eos:
                break
            job.decoder.push(token)
        text = job.decoder.text
        cut = job.matcher.cut(text) if job.stops else None
        safe = cut if cut is not None else len(text) - (job.matcher.holdback(text) if job.stops else 0)
        if safe > job.released and not job.cancelled:
            job.on_event(("text", text[job.released:safe]))
            job.released = safe
        if search.done or cut is not None:
            self._finish(i, searches, prompts, jobs, send=True)

    def _finish(self, i: int, searches: list, prompts: list, jobs: list, send: bool) -> None:
        job, search = jobs[i], searches[i]
        if job is None:
            return
        search.done = True
        if send and not job.cancelled:
            (hyp,) = self.gen._hypotheses(search, job.stops)
            if len(hyp["text"]) > job.released:
                job.on_event(("text", hyp["text"][job.released:]))
            job.on_event(("done", {**hyp, "prompt_tokens": int(job.prompt.size)}))
        jobs[i], searches[i], prompts[i] = None, _Finished(), None
        with self._cond:
            self._active -= 1
