"""The logits processors and warpers (tinybert/generation/processors.py) against transformers' own on the same
logits: repetition penalty, temperature, top-k, top-p and min-p, and sampling that never leaves the kept set."""

from __future__ import annotations

import numpy as np


def test_processors_match_transformers():
    import torch
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from tinybert.generation import GenerationParams, apply_repetition_penalty, warp

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4, 300)).astype(np.float32)
    seen = [rng.integers(0, 300, size=n) for n in (1, 5, 40, 300)]
    for penalty in (1.3, 0.7):
        ref = logits.copy()
        for row in range(4):
            ref[row] = RepetitionPenaltyLogitsProcessor(penalty)(
                torch.tensor(seen[row])[None], torch.tensor(logits[row:row + 1])).numpy()[0]
        np.testing.assert_allclose(apply_repetition_penalty(logits, seen, penalty), ref, rtol=1e-6)
    for t, k, p, m in ((0.7, 50, None, None), (1.0, None, 0.9, None), (1.5, 20, 0.5, None), (0.5, 300, 0.99, None),
                       (1.0, 5, 0.05, None), (1.0, None, None, 0.1), (0.8, 40, 0.9, 0.3)):
        ref = torch.tensor(logits)
        ref = TemperatureLogitsWarper(t)(None, ref)
        if k is not None:
            ref = TopKLogitsWarper(k)(None, ref)
        if p is not None:
            ref = TopPLogitsWarper(p)(None, ref)
        if m is not None:
            ref = MinPLogitsWarper(m)(None, ref)
        got = warp(logits, GenerationParams(temperature=t, top_k=k, top_p=p, min_p=m))
        ref = ref.numpy()
        np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
        np.testing.assert_allclose(got[~np.isinf(got)], ref[~np.isinf(ref)], rtol=1e-6)


def test_sampled_tokens_stay_inside_top_k_and_top_p():
    import torch
    from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from tinybert.generation import GenerationParams, pick

    logits = np.random.default_rng(1).normal(0, 2, size=(1, 200)).astype(np.float32)
    rng = np.random.default_rng(0)
    for params, warper in ((GenerationParams(temperature=1.0, top_k=7), TopKLogitsWarper(7)),
                           (GenerationParams(temperature=1.0, top_p=0.6), TopPLogitsWarper(0.6)),
                           (GenerationParams(temperature=1.0, min_p=0.2), MinPLogitsWarper(0.2))):
        allowed = set(np.flatnonzero(~torch.isinf(warper(None, torch.tensor(logits))).numpy()[0]))
        draws = [int(pick(logits, params, rng)[0]) for _ in range(3000)]
        assert set(draws) <= allowed
        assert len(set(draws)) >= min(len(allowed), 5), "the draws should explore the allowed set"
