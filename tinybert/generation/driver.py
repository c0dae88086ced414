"""The one batched decoding loop: every search of every input, greedy, sampled or beam, one model call per step.

The model is behind a ``Stepper`` (decoder-only and encoder-decoder adapters live with the API classes): its
cache holds ``blocks`` blocks of ``rows_per_block`` slots; an input being decoded owns one block (block b:
slots b·n … b·n + n − 1, and for an encoder-decoder source b), one slot per row of its search. Each
iteration:

1. inputs waiting for a block are admitted while blocks are free (``prefill``: the prefix into the block's
   first slot, and the logits after it) — continuous batching: a finished input's block is reused at once;
2. every live search says which of its previous rows each new row continues (``parents``): a row keeps its
   parent's slot when it is the first to claim it, otherwise the parent's cached positions are copied into
   a slot of the block that nobody continues, so a step copies only what beams duplicated, never the cache;
3. one ``step`` call feeds the next token of every row of every live search (token, slot, position,
   source block) and hands each search its own rows of the logits.

Searches only ever see their own rows and every kernel computes a row from that row alone, so an input's
result does not depend on what else is in the batch. Memory is bounded by ``blocks``, whatever the number
of inputs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np


class Search(Protocol):
    """What the driver needs of a search (BeamSearch, SampleSearch)."""

    plen: int           # prefix length: the prefix occupies positions 0 … plen − 1
    t: int              # tokens generated so far
    done: bool
    tokens: np.ndarray  # int64 [rows]: the tokens to feed next
    parents: np.ndarray  # int64 [rows]: the row of the previous feed each continues

    @property
    def rows(self) -> int: ...

    def advance(self, logits: np.ndarray) -> None: ...


class Stepper(Protocol):
    """A model with a slot cache of ``blocks`` × ``rows_per_block`` slots."""

    def prefill(self, inputs: Sequence[int], blocks: Sequence[int]) -> np.ndarray:
        """Run the prefix of each input into the first slot of its block (encoder-decoders: encode the
        source into the block's source too) → float32 [len(inputs), vocab], the logits after each prefix."""

    def step(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """One token per row: ``tokens[r]`` at ``positions[r]`` of slot ``slots[r]``, which belongs to block
        ``blocks[r]`` → float32 [rows, vocab]."""

    def copy_slots(self, dest: np.ndarray, src: np.ndarray, upto: int) -> None:
        """Slots ``dest[i]`` take over the first ``upto`` cached positions of slots ``src[i]``."""


def decode(stepper: Stepper, searches: Sequence[Search], blocks: int, rows_per_block: int) -> Iterator[list[int]]:
    """Run every search to its end; yield, after each model call, the indices of the searches it advanced
    (a streaming caller reads their new tokens; an abandoned iteration stops decoding). ``searches`` may grow
    while it runs (a server appends the requests that arrive): a new search joins at the next step. A search
    set ``done`` from outside (a cancelled request) leaves at the next step, its block freed."""
    pending = deque(range(len(searches)))
    known = len(searches)
    free = list(range(blocks - 1, -1, -1))
    live: dict[int, tuple[int, np.ndarray]] = {}     # search → (block, physical slot of each of its rows)
    while pending or live or len(searches) > known:
        pending.extend(range(known, len(searches)))
        known = len(searches)
        for i in [i for i in live if searches[i].done]:
            free.append(live.pop(i)[0])
        admit = []
        while pending and free:
            i = pending.popleft()
            if not searches[i].done:                # else cancelled before it started
                admit.append((i, free.pop()))
        if admit:
            logits = stepper.prefill([i for i, _ in admit], [b for _, b in admit])
            for (i, b), row in zip(admit, logits):
                searches[i].advance(row[None])
                live[i] = (b, np.array([b * rows_per_block]))
            yield [i for i, _ in admit]
        for i in [i for i in live if searches[i].done]:
            free.append(live.pop(i)[0])
        if not live:
            continue
        copies: dict[int, tuple[list[int], list[int]]] = {}
        for i, (b, slots) in live.items():
            search = searches[i]
            if search.rows != slots.size or not np.array_equal(search.parents, np.arange(slots.size)):
                upto = search.plen + search.t - 1        # positions already in the cache
                dest, src = copies.setdefault(upto, ([], []))
                live[i] = (b, _follow(slots, search.parents, b * rows_per_block, rows_per_block, dest, src))
        for upto, (dest, src) in copies.items():
            if dest:
                stepper.copy_slots(np.asarray(dest, dtype=np.int64), np.asarray(src, dtype=np.int64), upto)
        order = list(live)
        tokens = np.concatenate([searches[i].tokens for i in order]).astype(np.int32)
        slots = np.concatenate([live[i][1] for i in order]).astype(np.int32)
        counts = [searches[i].rows for i in order]
        positions = np.repeat([searches[i].plen + searches[i].t - 1 for i in order], counts).astype(np.int32)
        block_of = np.repeat([live[i][0] for i in order], counts).astype(np.int32)
        logits = stepper.step(tokens, slots, positions, block_of)
        offset = 0
        for i, n in zip(order, counts):
            searches[i].advance(logits[offset:offset + n])
            offset += n
        yield order
        for i in [i for i in live if searches[i].done]:
            free.append(live.pop(i)[0])


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


def run_all(stepper: Stepper, searches: Sequence[Search], blocks: int, rows_per_block: int) -> None:
    """``decode`` to the end."""
    for _ in decode(stepper, searches, blocks, rows_per_block):
        pass
