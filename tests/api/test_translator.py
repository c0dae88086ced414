"""Translator (T5 v1.0 / v1.1, BART, Marian files) against transformers' ``generate`` on the same random weights.

Every model is built at test time, saved with ``save_pretrained``, converted by ``tinybert_convert.convert``
and loaded from the file, so the converter, the format and the loader are in the path. References are
transformers' single-input ``generate`` runs (its batched beam search is not batch-invariant), while
tinybert runs the inputs as one batch: equal outputs show both fidelity and batch invariance.

Random models need help to be worth decoding: their LM heads are sharpened (scaled, or an independent
random head) so logits are decisive, and each model's EOS is a token its own greedy output reaches after
a few steps, so hypotheses end at different lengths (the models: ``seq2seq_model`` in tests/conftest.py, shared
with the generation-engine, CLI and C API tests). Marian with SentencePiece end to end:
tests/convert/test_spm.py; the `translate` / `summarize` commands: tests/frontends/test_cli_generation.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SEQ2SEQ_KINDS, SEQ2SEQ_VOCAB, seq2seq_reference, seq2seq_sources

from tinybert import Generator, Translator  # noqa: E402
from tinybert.errors import InputError, ModelKindError  # noqa: E402
from tinybert.loader import load  # noqa: E402
from tinybert.models.seq2seq import Seq2SeqModel  # noqa: E402

MAX_NEW = 40
pytestmark = pytest.mark.usefixtures("quiet_torch")


BEAM_CASES = {
    "greedy": dict(beam_size=1),
    "beam4_lp0.6_ngram3": dict(beam_size=4, length_penalty=0.6, no_repeat_ngram_size=3),
    "beam4_lp2_ngram3_early": dict(beam_size=4, length_penalty=2.0, no_repeat_ngram_size=3, early_stopping=True),
    "beam4_min32_2hyps": dict(beam_size=4, length_penalty=1.5, min_length=32, num_hypotheses=2),
}


def _hf_kwargs(case: dict) -> dict:
    return {"num_beams": case.get("beam_size", 1), "length_penalty": case.get("length_penalty", 1.0),
            "no_repeat_ngram_size": case.get("no_repeat_ngram_size", 0),
            "early_stopping": case.get("early_stopping", False), "min_new_tokens": case.get("min_length", 0),
            "num_return_sequences": case.get("num_hypotheses", 1)}


@pytest.mark.parametrize("case", list(BEAM_CASES))
@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_fp32_outputs_equal_single_input_generate(seq2seq_model, kind, case):
    """A batch of four sources of different lengths, one tinybert call; each equals transformers' run alone."""
    model, files = seq2seq_model(kind)
    settings = BEAM_CASES[case]
    tr = Translator(files["fp32"])
    sources = seq2seq_sources()
    got = tr.translate_ids(sources, max_length=MAX_NEW, **settings)
    lengths = []
    for src, hyps in zip(sources, got):
        hyps = hyps if isinstance(hyps, list) else [hyps]
        ref = seq2seq_reference(model, src, **_hf_kwargs(settings))
        assert [h["token_ids"] for h in hyps] == ref
        lengths += [len(h["token_ids"]) for h in hyps]
    if case in ("greedy", "beam4_min32_2hyps"):
        assert max(lengths) >= 32   # long outputs are covered (early ends: see the guard below)


@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_cases_exercise_early_ends(seq2seq_model, kind):
    """Guard on the fixtures, transformers only: with the picked EOS, beam search ends some sources early."""
    model, _ = seq2seq_model(kind)
    settings = _hf_kwargs(BEAM_CASES["beam4_lp0.6_ngram3"])
    ends = [len(seq2seq_reference(model, s, **settings)[0]) for s in seq2seq_sources()]
    assert min(ends) < MAX_NEW


@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_batch_invariance(seq2seq_model, kind):
    """Each source alone gives what it gives inside a batch, for every batch size (greedy and beam)."""
    _, files = seq2seq_model(kind)
    tr = Translator(files["fp32"])
    sources = seq2seq_sources(seed=5)
    for settings in (dict(beam_size=1), dict(beam_size=4, no_repeat_ngram_size=3)):
        together = tr.translate_ids(sources, max_length=MAX_NEW, **settings)
        in_pairs = tr.translate_ids(sources, max_length=MAX_NEW, batch_size=2, **settings)
        alone = [tr.translate_ids([s], max_length=MAX_NEW, **settings)[0] for s in sources]
        assert together == alone == in_pairs


@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_step_logits_match_generate(seq2seq_model, kind):
    """Greedy step logits (before any processor) within 1e-4 of transformers' ``output_logits``."""
    model, files = seq2seq_model(kind)
    tr = Translator(files["fp32"])
    src = seq2seq_sources()[1]
    got = tr.translate_ids([src], beam_size=1, max_length=MAX_NEW, output_logits=True)[0]
    out = model.generate(torch.tensor([src]), do_sample=False, max_new_tokens=MAX_NEW, output_logits=True,
                         return_dict_in_generate=True)
    ref = torch.stack(out.logits, dim=1)[0].numpy()
    assert got["logits"].shape == ref.shape
    np.testing.assert_allclose(got["logits"], ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_int8_agreement(seq2seq_model, kind, record_property):
    """int8 files against transformers fp32. Gate: teacher-forced next-token agreement (tinybert int8 fed
    transformers' own greedy output; top-1 equal at ≥ 95% of steps), which does not compound one near-tie
    into a different sentence. Reported besides: the share of whole outputs (greedy, beam 4) identical."""
    model, files = seq2seq_model(kind)
    sources = [s for seed in range(4) for s in seq2seq_sources(seed)]
    loaded = load(files["int8"])
    ours = Seq2SeqModel(loaded.config, loaded.tensors)
    steps = agree = 0
    for src in sources:
        dec = [model.config.decoder_start_token_id] + seq2seq_reference(model, src, eos_token_id=None)[0]
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec])).logits[0].numpy()
        ids = np.asarray(src, dtype=np.int32)
        state = ours.start(ours.encode(ids, np.array([0, ids.size])), np.array([0, ids.size]), length=len(dec))
        got = ours.step(state, np.asarray(dec, np.int32), np.zeros(len(dec), np.int32), np.arange(len(dec),
                                                                                                    dtype=np.int32))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        steps += len(dec)
    tr = Translator(files["int8"])
    same = runs = 0
    for settings in (dict(beam_size=1), dict(beam_size=4, no_repeat_ngram_size=3)):
        got = tr.translate_ids(sources, max_length=MAX_NEW, **settings)
        for src, hyp in zip(sources, got):
            same += hyp["token_ids"] == seq2seq_reference(model, src, **_hf_kwargs(settings))[0]
            runs += 1
    record_property("int8_next_token_agreement", agree / steps)
    record_property("int8_identical_outputs", same / runs)
    print(f"\n{kind} int8: next-token agreement {agree}/{steps} = {agree / steps:.4f}; "
          f"identical outputs {same}/{runs}")
    assert agree / steps >= 0.95


@pytest.mark.parametrize("kind", ["bart", "marian"])
def test_forced_eos_and_banned_pad(seq2seq_model, kind):
    """The file carries the checkpoint's forced EOS (BART/Marian) and Marian's banned pad: at the length
    limit the last token is the EOS, and the pad never appears even when the model would pick it."""
    model, files = seq2seq_model(kind)
    tr = Translator(files["fp32"])
    eos = model.generation_config.eos_token_id
    for hyp in tr.translate_ids(seq2seq_sources(), beam_size=1, max_length=5):
        assert hyp["finish_reason"] == "eos" and len(hyp["token_ids"]) <= 4
    assert tr.config.forced_eos_token_id == eos
    if kind == "marian":
        assert tr.config.bad_token_ids == (SEQ2SEQ_VOCAB - 1,)


def test_text_api_and_summarize(seq2seq_model, bpe_tokenizer_file):
    """translate / summarize on text: the source is the tokenizer's encoding, the text the decode of the ids
    (equal to the ids route), one string in → one string out, num_hypotheses → lists."""
    from tokenizers import Tokenizer

    model, files = seq2seq_model("bart")
    tr = Translator(files["fp32"])
    tok = Tokenizer.from_file(str(bpe_tokenizer_file))
    texts = ["The weather is lovely today.", "Beam search keeps the best partial translations.", "Ça va? 你好 🙂"]
    ids = [tok.encode(t).ids for t in texts]
    by_ids = tr.translate_ids(ids, beam_size=4)
    assert tr.translate(texts) == [tok.decode(h["token_ids"], skip_special_tokens=True) for h in by_ids]
    assert tr.translate(texts[0]) == tr.translate(texts)[0]
    full = tr.translate(texts, return_ids=True)
    assert [f["token_ids"] for f in full] == [h["token_ids"] for h in by_ids]
    two = tr.translate(texts, num_hypotheses=2)
    assert all(isinstance(x, list) and len(x) == 2 for x in two)
    ref = seq2seq_reference(model, ids[1], num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, early_stopping=True,
                    max_new_tokens=60)
    assert tr.summarize(texts[1], max_length=60, return_ids=True)["token_ids"] == ref[0]
    sampled = tr.translate(texts, beam_size=1, temperature=0.8, top_k=20, seed=3)
    assert sampled == tr.translate(texts, beam_size=1, temperature=0.8, top_k=20, seed=3)


def test_long_sources(seq2seq_model):
    _, files = seq2seq_model("bart")
    tr = Translator(files["fp32"])
    long_text = "word " * 400
    with pytest.raises(InputError, match="truncation"):
        tr.translate(long_text)
    assert isinstance(tr.translate(long_text, truncation=True, max_length=5), str)
    assert isinstance(tr.summarize(long_text, max_length=5), str)     # summarize truncates by default


@pytest.mark.parametrize("kwargs, match", [
    (dict(beam_size=0), "beam_size"),
    (dict(beam_size=257), "beam_size"),
    (dict(max_length=0), "max_length"),
    (dict(num_hypotheses=5), "num_hypotheses"),
    (dict(min_length=-1), "min_length"),
    (dict(beam_size=4, temperature=0.7), "deterministic"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_settings_raise(seq2seq_model, kwargs, match):
    _, files = seq2seq_model("t5-v1.0")
    tr = Translator(files["fp32"])
    with pytest.raises(InputError, match=match):
        tr.translate(["a text"], **kwargs)


def test_bad_inputs_raise(seq2seq_model, decoder_model):
    _, files = seq2seq_model("t5-v1.0")
    tr = Translator(files["fp32"])
    for texts in ([], "", ["ok", ""], [None], 3):
        with pytest.raises(InputError):
            tr.translate(texts)
    for ids in ([], [[]], [[5, SEQ2SEQ_VOCAB]], [[-1, 3]], [[1.5, 2.0]], "abc", [[5] * 200]):
        with pytest.raises(InputError):
            tr.translate_ids(ids)
    with pytest.raises(InputError, match="output_logits"):
        tr.translate_ids([[5, 6]], beam_size=4, output_logits=True)
    _, decoder_files = decoder_model("gpt2")
    with pytest.raises(ModelKindError):
        Translator(decoder_files["fp32"])
    with pytest.raises(ModelKindError):
        Generator(files["fp32"])


def test_file_records_generation_settings(seq2seq_model):
    """What the converter took from config.json / generation_config.json, read back from the file."""
    model, files = seq2seq_model("marian")
    tr = Translator(files["int8"])
    cfg = json.loads(tr.metadata["config"])
    assert cfg["kind"] == "encoder-decoder" and cfg["family"] == "marian"
    assert cfg["decoder_start_token_id"] == model.config.decoder_start_token_id
    assert cfg["eos_token_ids"] == [model.generation_config.eos_token_id]
    assert tr.quantization == "int8"
