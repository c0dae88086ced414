"""tinybert.beam.beam_search against transformers' ``generate(num_beams=..., do_sample=False)``.

The ``step`` callback is driven by the same small random transformers model, recomputing every beam from
scratch each step, so any difference comes from the search itself. Reference ids and scores always come
from transformers. The models' LM heads are independent random matrices scaled up, so that logits are
decisive enough for float noise (KV cache vs full recompute) not to flip a choice: token ids must be equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinybert.errors import InputError
from tinybert.generation import GenerationParams, beam_search, log_softmax, top_k

MAX_NEW = 32


pytestmark = pytest.mark.usefixtures("quiet_torch")


class RecomputeStep:
    """A ``step`` callback that keeps each beam's ids, reorders them by ``parents`` and reruns the model on all
    beams; it also checks the callback contract."""

    def __init__(self, model, prefix: list[int], num_beams: int, encoder_ids: list[int] | None = None) -> None:
        self.model, self.prefix, self.num_beams, self.encoder_ids = model, list(prefix), num_beams, encoder_ids
        self.seqs: list[list[int]] = []
        self.calls = 0

    def __call__(self, tokens: np.ndarray, parents: np.ndarray) -> np.ndarray:
        assert tokens.dtype == np.int64 and parents.dtype == np.int64 and tokens.shape == parents.shape
        if self.calls == 0:
            assert tokens.tolist() == [self.prefix[-1]] and parents.tolist() == [0]
            self.seqs = [list(self.prefix)]
        else:
            assert tokens.shape == (self.num_beams,)
            assert 0 <= parents.min() and parents.max() < len(self.seqs)
            self.seqs = [self.seqs[p] + [int(t)] for p, t in zip(parents, tokens)]
        self.calls += 1
        ids = torch.tensor(self.seqs)
        with torch.no_grad():
            if self.encoder_ids is None:
                out = self.model(input_ids=ids)
            else:
                enc = torch.tensor([self.encoder_ids]).expand(len(self.seqs), -1)
                out = self.model(input_ids=enc, decoder_input_ids=ids)
        return out.logits[:, -1].float().numpy()


def reference(model, inputs: list[int], params: GenerationParams, eos: list[int], max_new: int,
              **extra) -> list[tuple[list[int], float]]:
    """transformers' beam search: (new ids, sequences_score) per returned sequence, best first."""
    ids = torch.tensor([inputs])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
        num_beams=params.num_beams, length_penalty=params.length_penalty, early_stopping=params.early_stopping,
        num_return_sequences=params.num_return_sequences, no_repeat_ngram_size=params.no_repeat_ngram_size,
        min_new_tokens=params.min_new_tokens, repetition_penalty=params.repetition_penalty,
        eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0,
        return_dict_in_generate=True, output_scores=True, **extra)
    start = 1 if model.config.is_encoder_decoder else len(inputs)     # decoder start / prompt
    # Shorter hypotheses are padded: their generated length is where beam_indices stops being -1.
    lengths = (out.beam_indices != -1).sum(dim=1).tolist()
    return [(out.sequences[i, start:start + n].tolist(), float(out.sequences_scores[i]))
            for i, n in enumerate(lengths)]


def check(model, inputs: list[int], params: GenerationParams, eos: list[int], max_new: int = MAX_NEW,
          decoder_start: int | None = None, **extra) -> tuple[list[dict], int]:
    """Compare with transformers; return beam_search's hypotheses and how many times it called step."""
    ref = reference(model, inputs, params, eos, max_new, **extra)
    if decoder_start is None:
        step = RecomputeStep(model, inputs, params.num_beams)
        got = beam_search(step, inputs, max_new, set(eos), params)
    else:
        step = RecomputeStep(model, [decoder_start], params.num_beams, encoder_ids=inputs)
        got = beam_search(step, [decoder_start], max_new, set(eos), params)
    assert step.calls <= max_new
    assert [g["token_ids"] for g in got] == [r[0] for r in ref]
    np.testing.assert_allclose([g["score"] for g in got], [r[1] for r in ref], rtol=0, atol=1e-4)
    return got, step.calls


def _greedy(model, ids: list[int], n: int, **extra) -> list[int]:
    out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=None,
                         pad_token_id=0, **extra)
    return out[0, -n:].tolist()


# ---------------------------------------------------------------------------------------------- decoder-only

@pytest.fixture(scope="module")
def gpt2():
    """Random GPT-2, three prompts and two EOS ids picked from its own greedy output. The first EOS's LM-head row
    is scaled up so that EOS is frequent: beams then end at mixed lengths and the early-stop rules matter."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                     tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg).eval()
    p1 = [5, 17, 300, 42]
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        greedy = _greedy(model, p1, 8)
        eos, eos2 = greedy[5], greedy[2]
        model.lm_head.weight[eos] *= 1.6
    prompts = [p1, p1 + greedy[:6] + p1,
               # The model continues this one with 553, which the trigram (5, 124, 553) in the prompt bans.
               [403, 28, 5, 124, 553, 403, 28, 5, 124]]
    return model, prompts, eos, eos2


DECODER_CASES = {
    "lp1": {},
    "lp0.6": {"length_penalty": 0.6},
    "lp2": {"length_penalty": 2.0},
    "early_true": {"early_stopping": True, "length_penalty": 2.0},
    "early_never": {"early_stopping": "never"},
    "early_never_neg_lp": {"early_stopping": "never", "length_penalty": -0.5},
    "ngram3": {"no_repeat_ngram_size": 3},
    "return3": {"num_return_sequences": 3},
    "min_new5": {"min_new_tokens": 5},
    "rep1.3": {"repetition_penalty": 1.3},
    "all": {"length_penalty": 0.6, "early_stopping": True, "no_repeat_ngram_size": 3, "num_return_sequences": 3,
            "min_new_tokens": 5, "repetition_penalty": 1.3},
    "beams6": {"num_beams": 6, "num_return_sequences": 6, "length_penalty": 2.0, "early_stopping": "never"},
}


@pytest.mark.parametrize("case", list(DECODER_CASES))
def test_decoder_only_matches_transformers(gpt2, case):
    model, prompts, eos, _ = gpt2
    kw = {"num_beams": 4, **DECODER_CASES[case]}
    for prompt in prompts:
        check(model, prompt, GenerationParams(**kw), [eos])


def test_decoder_only_cases_exercise_their_feature(gpt2):
    """Guard on the fixture, transformers only: each option changes transformers' result on some prompt, so
    matching it in the cases above means something (the n-gram case through a prompt n-gram)."""
    model, prompts, eos, _ = gpt2
    assert _greedy(model, prompts[2], 1) == [553]

    def ids(case: str, **over) -> list[list[list[int]]]:
        kw = {"num_beams": 4, **DECODER_CASES[case], "num_return_sequences": 4, **over}
        return [[t for t, _ in reference(model, p, GenerationParams(**kw), [eos], MAX_NEW)] for p in prompts]

    base, lp2 = ids("lp1"), ids("lp2")
    assert ids("early_true") != lp2
    assert ids("early_never") != base
    assert ids("ngram3")[2] != base[2]
    assert ids("min_new5") != base
    assert ids("rep1.3") != base
    # Hypotheses end both ways: early with EOS and at max_new_tokens.
    hyps = [t for per_prompt in base + lp2 for t in per_prompt]
    assert MAX_NEW in {len(t) for t in hyps} and all(t[-1] == eos for t in hyps if len(t) < MAX_NEW)
    assert min(len(t) for t in hyps) < MAX_NEW


def test_decoder_only_several_eos_and_early_stop(gpt2):
    """Two EOS ids (K = 3·num_beams candidates); with early_stopping=True the search ends before max_new_tokens."""
    model, prompts, eos, eos2 = gpt2
    params = GenerationParams(num_beams=4, early_stopping=True, num_return_sequences=4, length_penalty=0.6)
    calls = [check(model, prompt, params, [eos, eos2])[1] for prompt in prompts]
    assert min(calls) < MAX_NEW


def test_decoder_only_without_eos(gpt2):
    """No EOS: only max_new_tokens ends the search."""
    model, prompts, _, _ = gpt2
    for prompt in prompts:
        params = GenerationParams(num_beams=4, num_return_sequences=2, length_penalty=0.6)
        got, calls = check(model, prompt, params, [], 12)
        assert calls == 12 and all(len(g["token_ids"]) == 12 for g in got)


# ------------------------------------------------------------------------------------------- encoder-decoder

@pytest.fixture(scope="module")
def bart():
    """Random BART; EOS (and the "bad" token) picked from its greedy output. decoder_start_token_id stays 2."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                     max_position_embeddings=128, tie_word_embeddings=False)
    model = BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    src = [0, 5, 17, 300, 42, 99, 2]
    greedy = _greedy(model, src, 10, forced_bos_token_id=None, forced_eos_token_id=None)
    return model, src, greedy[6], greedy[1]


@pytest.fixture(scope="module")
def t5():
    """Random T5 (decoder start = pad = 0) with an independent random LM head (tied T5 embeddings make a random
    model repeat one token)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=1000, d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16)
    model = T5ForConditionalGeneration(cfg).eval()
    head = torch.randn(1000, 64, generator=torch.Generator().manual_seed(1)) * 0.3
    model.lm_head.weight = torch.nn.Parameter(head)
    src = [5, 17, 300, 42, 99, 1]
    greedy = _greedy(model, src, 10, decoder_start_token_id=0)
    return model, src, greedy[7]


ENC_DEC_CASES = {
    "lp0.6": {"length_penalty": 0.6, "no_repeat_ngram_size": 3, "num_return_sequences": 2},
    "lp2_early": {"length_penalty": 2.0, "no_repeat_ngram_size": 3, "early_stopping": True},
    "lp1.5_never_rep": {"length_penalty": 1.5, "no_repeat_ngram_size": 3, "early_stopping": "never",
                        "repetition_penalty": 1.3, "min_new_tokens": 5, "num_return_sequences": 3},
}


@pytest.mark.parametrize("case", list(ENC_DEC_CASES))
def test_bart_matches_transformers(bart, case):
    """BART's generation config forces BOS/EOS ids: switched off here (tested separately below)."""
    model, src, eos, _ = bart
    check(model, src, GenerationParams(num_beams=4, **ENC_DEC_CASES[case]), [eos], 40, decoder_start=2,
          forced_bos_token_id=None, forced_eos_token_id=None)


def test_bart_forced_bos_eos_and_bad_token(bart):
    """forced_bos_token_id (first token after the decoder start), forced_eos_token_id (last step) and a
    single-token bad word, as mBART/Marian-style generation configs set them."""
    model, src, eos, bad = bart
    params = GenerationParams(num_beams=4, length_penalty=0.6, no_repeat_ngram_size=3, num_return_sequences=4,
                        forced_bos_token_id=0, forced_eos_token_id=eos, bad_token_ids=(bad,))
    got, _ = check(model, src, params, [eos], 40, decoder_start=2, forced_bos_token_id=0, forced_eos_token_id=eos,
                bad_words_ids=[[bad]])
    assert all(g["token_ids"][0] == 0 and g["token_ids"][-1] == eos and bad not in g["token_ids"] for g in got)


@pytest.mark.parametrize("case", list(ENC_DEC_CASES))
def test_t5_matches_transformers(t5, case):
    model, src, eos = t5
    check(model, src, GenerationParams(num_beams=4, **ENC_DEC_CASES[case]), [eos], 40, decoder_start=0,
          decoder_start_token_id=0)


def test_t5_cases_exercise_ngram_ban_and_eos(t5):
    """Guard on the fixture, transformers only: the random T5 repeats itself, so the n-gram ban changes the
    result, and its hypotheses end with EOS before max_new_tokens."""
    model, src, eos = t5
    params = GenerationParams(num_beams=4, **ENC_DEC_CASES["lp0.6"])
    with_ban = reference(model, src, params, [eos], 40, decoder_start_token_id=0)
    no_ban = reference(model, src, GenerationParams(num_beams=4, length_penalty=0.6, num_return_sequences=2), [eos], 40,
                       decoder_start_token_id=0)
    assert [t for t, _ in with_ban] != [t for t, _ in no_ban]
    assert all(len(t) < 40 and t[-1] == eos for t, _ in with_ban)


# ------------------------------------------------------------------------------------------ contract / errors

@pytest.mark.parametrize("kw", [
    {"num_beams": 0},
    {"num_beams": 10 ** 6},      # hours of search (and its memory), not an answer
    {"num_beams": 2, "num_return_sequences": 3},
    {"num_beams": 2, "num_return_sequences": 0},
    {"num_beams": 2, "early_stopping": "sometimes"},
    {"num_beams": 2, "length_penalty": float("nan")},
    {"num_beams": 2, "no_repeat_ngram_size": -1},
    {"num_beams": 2, "repetition_penalty": 0.0},
    {"num_beams": 2, "bad_token_ids": (-1,)},
])
def test_bad_params_raise(kw):
    with pytest.raises(InputError):
        GenerationParams(**kw).validate()

    def step(tokens, parents):
        raise AssertionError("step must not be called with bad params")

    with pytest.raises(InputError):
        beam_search(step, [1, 2], 4, {3}, GenerationParams(**kw))


def test_bad_arguments_raise():
    def step(tokens, parents):
        return np.zeros((len(tokens), 10), dtype=np.float32)

    params = GenerationParams(num_beams=2)
    with pytest.raises(InputError):
        beam_search(step, [], 4, {3}, params)
    with pytest.raises(InputError):
        beam_search(step, [1], 0, {3}, params)
    with pytest.raises(InputError):
        beam_search(step, [1], 4, {10}, params)                                    # EOS outside the vocab
    with pytest.raises(InputError):
        beam_search(lambda t, p: np.zeros((3, 10), np.float32), [1], 4, {3}, params)  # wrong row count


def test_large_vocab_contract_without_eos():
    """260k vocab: rows per call are 1 then num_beams, parents index the previous call's rows, and without EOS
    the search runs exactly max_new_tokens steps."""
    vocab, nb, calls = 260_000, 4, []
    rng = np.random.default_rng(0)

    def step(tokens, parents):
        calls.append((tokens.copy(), parents.copy()))
        return rng.standard_normal((len(tokens), vocab)).astype(np.float32) * 3

    got = beam_search(step, [7, 8], 5, set(), GenerationParams(num_beams=nb, num_return_sequences=nb))
    assert len(calls) == 5 and [len(t) for t, _ in calls] == [1, nb, nb, nb, nb]
    assert calls[1][1].tolist() == [0] * nb
    assert all(p.max() < nb for _, p in calls[1:])
    assert len(got) == nb and all(len(g["token_ids"]) == 5 for g in got)
    assert [g["score"] for g in got] == sorted((g["score"] for g in got), reverse=True)


def test_top_k_ties_go_to_the_lower_index():
    v = np.array([1, 3, 3, 0, 3, 2, 3], dtype=np.float32)
    assert top_k(v, 3)[0].tolist() == [1, 2, 4]
    assert top_k(v, 7)[0].tolist() == [1, 2, 4, 6, 5, 0, 3]
    assert top_k(np.full(5, -np.inf, dtype=np.float32), 2)[0].tolist() == [0, 1]


@pytest.mark.parametrize("rows,vocab,k", [(1, 1, 1), (1, 7, 7), (4, 1000, 8), (3, 32128, 12), (4, 50, 200)])
def test_top_k_matches_a_full_sort(rows, vocab, k):
    """The one-pass kernel against a stable sort of the flattened [rows, vocab] + add, with many ties and
    -inf entries."""
    rng = np.random.default_rng(rows * vocab + k)
    values = np.round(rng.standard_normal((rows, vocab)), 1).astype(np.float32)
    values[rng.random((rows, vocab)) < 0.1] = -np.inf
    add = np.round(rng.standard_normal(rows), 1).astype(np.float32)
    idx, val = top_k(values, k, add=add)
    flat = (values + add[:, None]).ravel()
    ref = np.lexsort((np.arange(flat.size), -flat))[:min(k, flat.size)]
    assert idx.tolist() == ref.tolist()
    np.testing.assert_array_equal(val, flat[ref])


def test_log_softmax_matches_torch():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 32128)) * 4).astype(np.float32)
    x[1, :50] = -np.inf
    x[2] = 0.0
    got = log_softmax(x)
    ref = torch.log_softmax(torch.from_numpy(x), dim=-1).numpy()
    assert np.array_equal(np.isinf(got), np.isinf(ref))
    finite = np.isfinite(ref)
    # torch's own float32 sum is off by up to ~1.3e-5 here; the float64 answer bounds both
    np.testing.assert_allclose(got[finite], ref[finite], atol=3e-5, rtol=0)
    x64 = np.where(np.isinf(x), -np.inf, x.astype(np.float64))
    shifted = x64 - x64.max(axis=1, keepdims=True)
    exact = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got[finite], exact[finite], atol=5e-6, rtol=0)
