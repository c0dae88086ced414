"""Multilingual translation (NLLB-200, M2M-100, mBART-50) against transformers' ``generate``.

Each model is a small random transformers model of its family with a tokenizer of the family's own
transformers class (NllbTokenizer in both source layouts, MBart50Tokenizer; M2M100Tokenizer on M2M-100's own
folder layout, sentencepiece.bpe.model + vocab.json and no tokenizer.json) built at test time and saved, so
the language-code tokens, their ids and the source template are the ones transformers' special-token logic
makes. References: the tokenizer with ``src_lang`` set, then ``generate(forced_bos_token_id=...)`` with the
target code's id (``get_lang_id`` for M2M-100), as transformers' docs translate with these models. The
architectures' greedy / beam / logits / int8 tests: tests/api/test_translator.py (kinds m2m_100, mbart).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import LANGUAGE_KINDS as KINDS
from conftest import seq2seq_reference

from tinybert import Translator  # noqa: E402
from tinybert.errors import InputError  # noqa: E402

pytestmark = pytest.mark.usefixtures("quiet_torch")

TEXTS = ["hello world.", "the quick brown fox jumps over the lazy dog, twice!", "why?", "it's a small model"]
MAX_NEW = 30
LANGUAGE_COUNTS = {"nllb": 202, "nllb-legacy": 202, "mbart50": 52, "m2m100": 100}


def _code_id(tok, code: str) -> int:
    """The token id of a language code, as the family's docs look it up."""
    return tok.get_lang_id(code) if type(tok).__name__ == "M2M100Tokenizer" else tok.convert_tokens_to_ids(code)


def _reference(model, tok, text: str, src: str, tgt: str, **kwargs) -> list[list[int]]:
    tok.src_lang = src
    ids = tok(text)["input_ids"]
    return seq2seq_reference(model, ids, max_new_tokens=MAX_NEW, forced_bos_token_id=_code_id(tok, tgt), **kwargs)


@pytest.mark.parametrize("settings", [dict(beam_size=1), dict(beam_size=4, no_repeat_ngram_size=3, num_hypotheses=2)],
                         ids=["greedy", "beam4"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_translate_equals_generate_with_forced_language(multilingual, kind, settings):
    """Text in, with src_lang and tgt_lang: the source ids the family's tokenizer makes for src_lang, the target
    code forced first, ids and text equal to transformers'."""
    model, tok, files = multilingual(kind)
    _, src, tgt = KINDS[kind]
    tr = Translator(files["fp32"])
    got = tr.translate(TEXTS, src_lang=src, tgt_lang=tgt, max_length=MAX_NEW, return_ids=True, **settings)
    hf = {"num_beams": settings["beam_size"], "no_repeat_ngram_size": settings.get("no_repeat_ngram_size", 0),
          "num_return_sequences": settings.get("num_hypotheses", 1)}
    for text, hyps in zip(TEXTS, got):
        hyps = hyps if isinstance(hyps, list) else [hyps]
        ref = _reference(model, tok, text, src, tgt, **hf)
        assert [h["token_ids"] for h in hyps] == ref
        assert all(h[0] == _code_id(tok, tgt) for h in ref)
        assert [h["text"] for h in hyps] == [tok.decode(r, skip_special_tokens=True) for r in ref]


@pytest.mark.parametrize("kind", list(KINDS))
def test_file_records_language_codes(multilingual, kind):
    """Every language code of the tokenizer and its token, and where the source code goes."""
    model, tok, files = multilingual(kind)
    tr = Translator(files["int8"])
    cfg = json.loads(tr.metadata["config"])
    codes = [t for t in tok.extra_special_tokens if t in tr.languages] if kind == "nllb" else tr.languages
    assert len(tr.languages) == LANGUAGE_COUNTS[kind] and len(codes) == len(tr.languages)
    assert cfg["language_codes"] == {c: _code_id(tok, c) for c in tr.languages}
    assert cfg["language_position"] == ("suffix" if kind == "nllb-legacy" else "prefix")
    assert cfg["source_eos_token_id"] == tok.eos_token_id


@pytest.mark.parametrize("kind", ["nllb", "nllb-legacy"])
def test_default_source_language_and_ids(multilingual, kind):
    """Without src_lang the tokenizer's own template (the language it was saved with); translate_ids with
    tgt_lang forces the code on ids that carry their source code."""
    model, tok, files = multilingual(kind)
    tr = Translator(files["fp32"])
    tgt = "fra_Latn"
    tok.src_lang = "eng_Latn"
    ids = [tok(t)["input_ids"] for t in TEXTS]
    by_ids = tr.translate_ids(ids, beam_size=1, max_length=MAX_NEW, tgt_lang=tgt)
    by_text = tr.translate(TEXTS, beam_size=1, max_length=MAX_NEW, tgt_lang=tgt, return_ids=True)
    assert [h["token_ids"] for h in by_ids] == [h["token_ids"] for h in by_text]
    assert by_ids[0]["token_ids"] == _reference(model, tok, TEXTS[0], "eng_Latn", tgt)[0]


@pytest.mark.parametrize("kind", ["nllb", "m2m100"])
def test_int8_agreement_with_languages(multilingual, record_property, kind):
    """int8 files: greedy outputs with forced languages against transformers fp32 (measured; the gated int8
    check of these architectures is tests/api/test_translator.py::test_int8_agreement)."""
    model, tok, files = multilingual(kind)
    _, src, tgt = KINDS[kind]
    tr = Translator(files["int8"])
    got = tr.translate(TEXTS, src_lang=src, tgt_lang=tgt, beam_size=1, max_length=MAX_NEW, return_ids=True)
    same = sum(g["token_ids"] == _reference(model, tok, t, src, tgt)[0] for t, g in zip(TEXTS, got))
    record_property("int8_identical_outputs", same / len(TEXTS))
    print(f"\n{kind} int8 with languages: identical outputs {same}/{len(TEXTS)}")
    assert all(g["token_ids"][0] == _code_id(tok, tgt) for g in got)


def test_language_errors(multilingual, seq2seq_model):
    _, _, files = multilingual("mbart50")
    tr = Translator(files["fp32"])
    with pytest.raises(InputError, match="tgt_lang") as err:
        tr.translate("hello")
    assert "de_DE" in str(err.value)
    with pytest.raises(InputError, match="tgt_lang"):
        tr.translate_ids([[5, 6, 2]])
    with pytest.raises(InputError, match=r"tgt_lang 'xx_YY' is not one of .*en_XX"):
        tr.translate("hello", tgt_lang="xx_YY")
    with pytest.raises(InputError, match="src_lang 'fra_Latn' is not one of"):
        tr.translate("hello", src_lang="fra_Latn", tgt_lang="de_DE")
    with pytest.raises(InputError, match="truncation"):
        tr.translate("word " * 200, src_lang="fr_XX", tgt_lang="de_DE")
    long = tr.translate("word " * 200, src_lang="fr_XX", tgt_lang="de_DE", truncation=True, max_length=3,
                        return_ids=True)
    assert long["token_ids"][0] == tr.config.language_codes["de_DE"]
    _, plain = seq2seq_model("bart")
    with pytest.raises(InputError, match="no language codes"):
        Translator(plain["fp32"]).translate("hello", tgt_lang="de_DE")


def test_truncated_source_keeps_code_and_eos(multilingual):
    """A source past max_positions with truncation: transformers' truncation keeps the code and </s>."""
    model, tok, files = multilingual("nllb-legacy")
    tr = Translator(files["fp32"])
    text = "abc " * 60
    tok.src_lang = "eng_Latn"
    ids = tok(text, truncation=True, max_length=tr.config.max_positions)["input_ids"]
    assert len(ids) == tr.config.max_positions and ids[-2:] == [2, tok.convert_tokens_to_ids("eng_Latn")]
    got = tr.translate(text, src_lang="eng_Latn", tgt_lang="fra_Latn", truncation=True, beam_size=1, max_length=8,
                       return_ids=True)
    ref = seq2seq_reference(model, ids, max_new_tokens=8, forced_bos_token_id=tok.convert_tokens_to_ids("fra_Latn"))
    assert got["token_ids"] == ref[0]
    np.testing.assert_array_equal(len(ids), tr.config.max_positions)


def test_cli_translate_with_languages(multilingual, capsys):
    """`tinybert translate --src-lang --tgt-lang`: each line as transformers' generate with those languages; a
    missing or unknown code is a CLI error naming the valid codes."""
    from tinybert.cli import main

    model, tok, files = multilingual("nllb")
    path = str(files["fp32"])
    assert main(["translate", path, *TEXTS[:2], "--src-lang", "deu_Latn", "--tgt-lang", "fra_Latn", "--beam-size",
                 "1", "--max-length", str(MAX_NEW), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["token_ids"] for r in rows] == [_reference(model, tok, t, "deu_Latn", "fra_Latn")[0] for t in TEXTS[:2]]
    assert main(["translate", path, "hello", "--src-lang", "deu_Latn"]) == 2
    assert "pass tgt_lang" in capsys.readouterr().err
    assert main(["translate", path, "hello", "--tgt-lang", "xx"]) == 2
    assert "fra_Latn" in capsys.readouterr().err


# ---------------------------------------------------------------- M2M-100's own folders (no tokenizer.json)

M2M_TEXTS = TEXTS + ["Hello World. The model's output.", "東京は日本の首都です。 привет мир", "東京 ☃ 😀😀 한국어",
                     "  many   spaces\there  ", "tabs\tand\nnewlines", "x __de__ y </s> <unk>", "ünïcödé — ½ ①",
                     "word " * 20]


@pytest.mark.parametrize("settings", [dict(beam_size=1), dict(beam_size=4, no_repeat_ngram_size=3, num_hypotheses=2)],
                         ids=["greedy", "beam4"])
def test_m2m100_own_folder_translates_as_transformers(multilingual, sentences, settings):
    """facebook/m2m100_*'s layout (sentencepiece.bpe.model, vocab.json, tokenizer_config.json,
    special_tokens_map.json): the file carries the rebuilt tokenizers, and translate() equals M2M100Tokenizer →
    generate(forced_bos_token_id=get_lang_id(tgt)) → decode on shared sentences, non-Latin scripts, characters the
    SentencePiece model lacks (some of which vocab.json has), whitespace runs, special tokens in text, the empty
    string; for two source languages."""
    model, tok, files = multilingual("m2m100")
    folder = files["fp32"].parent / "hf"
    assert not (folder / "tokenizer.json").exists() and (folder / "sentencepiece.bpe.model").is_file()
    tr = Translator(files["fp32"])
    assert {"target_tokenizer", "source_id_map", "source_unknown_pieces"} <= set(tr.metadata)
    texts = sentences[:6] + M2M_TEXTS if settings["beam_size"] == 1 else M2M_TEXTS[4:]
    hf = {"num_beams": settings["beam_size"], "no_repeat_ngram_size": settings.get("no_repeat_ngram_size", 0),
          "num_return_sequences": settings.get("num_hypotheses", 1)}
    for src, tgt in (("fr", "de"), ("zh", "en")):
        got = tr.translate(texts, src_lang=src, tgt_lang=tgt, max_length=MAX_NEW, return_ids=True, **settings)
        for text, hyps in zip(texts, got):
            hyps = hyps if isinstance(hyps, list) else [hyps]
            ref = _reference(model, tok, text, src, tgt, **hf)
            assert [h["token_ids"] for h in hyps] == ref, text
            assert [h["text"] for h in hyps] == [tok.decode(r, skip_special_tokens=True) for r in ref], text


def test_m2m100_own_folder_default_language_and_errors(multilingual):
    """Without src_lang the tokenizer's own template ([__en__] text </s>, the language it was saved with); an
    unknown code is an InputError listing the codes."""
    model, tok, files = multilingual("m2m100")
    tr = Translator(files["fp32"])
    got = tr.translate(TEXTS, tgt_lang="fr", beam_size=1, max_length=MAX_NEW, return_ids=True)
    assert [g["token_ids"] for g in got] == [_reference(model, tok, t, "en", "fr")[0] for t in TEXTS]
    with pytest.raises(InputError, match=r"tgt_lang 'fra_Latn' is not one of .*\bde, el, en, es\b"):
        tr.translate("hello", src_lang="en", tgt_lang="fra_Latn")
    with pytest.raises(InputError, match="src_lang 'xx' is not one of"):
        tr.translate("hello", src_lang="xx", tgt_lang="de")
    with pytest.raises(InputError, match="tgt_lang"):
        tr.translate("hello", src_lang="en")
