"""M2M-100's own tokenizer folders (convert/m2m100.py: sentencepiece.bpe.model + vocab.json, no tokenizer.json).

The reference is transformers' slow M2M100Tokenizer loaded from the same folder (conftest.write_m2m100_tokenizer:
a SentencePiece model trained here, vocab.json laid out as fairseq's dictionary, the Hub's, transformers 4's and
transformers 5's tokenizer files); never tinybert's own output. The Translator end to end on such a folder:
tests/api/test_translator_languages.py (kind "m2m100").
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import transformers
from conftest import M2M100_UNKNOWN_ENTRIES, write_m2m100_tokenizer
from test_spm import HARD, _check_all
from tinybert_convert.m2m100 import m2m100_tokenizers
from tokenizers import Tokenizer

from tinybert.errors import ConversionError, UnsupportedModelError
from tinybert.tokenizer import Decoder

VOCAB = 1000        # the model's vocabulary: vocab.json, 100 language tokens, then ids M2M100Tokenizer reads as <unk>
FOLDERS = [("bpe", "hub"), ("bpe", "v4"), ("bpe", "v5"), ("unigram", "hub")]
SPECIAL_TEXTS = ["x __de__ y </s> <unk> <s>z<pad>", "__fr__", "<unk>", "</s></s>", "  __en__  spaced  </s>  ",
                 " ".join(M2M100_UNKNOWN_ENTRIES), "☃☃ 東京東京 ▁Z▁ \u2581Z\u2581", "a☃b 東x京", ""]


def _reference(folder: Path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
    assert type(tok).__name__ == "M2M100Tokenizer"
    return tok


class _Converted:
    """What convert() stores, used as the Translator uses it (tinybert/api/translator.py)."""

    def __init__(self, folder: Path, vocab_size: int = VOCAB):
        m = m2m100_tokenizers(folder, vocab_size)
        self.source = Tokenizer.from_str(m.source)
        self.target = Tokenizer.from_str(m.target)
        self.id_map = np.asarray(m.id_map)
        self.unknown = m.unknown_pieces
        self.languages = m.language_settings
        self.hits = 0

    def body(self, text: str, add_special_tokens: bool = False) -> list[int]:
        encoding = self.source.encode(text, add_special_tokens=add_special_tokens)
        ids = self.id_map[encoding.ids]
        for i in np.flatnonzero(np.asarray(encoding.ids, dtype=np.int64) == self.unknown["unk_id"]):
            key = text[slice(*encoding.offsets[i])] if self.unknown.get("match") == "text" else encoding.tokens[i]
            self.hits += key in self.unknown["pieces"]
            ids[i] = self.unknown["pieces"].get(key, ids[i])
        return ids.tolist()

    def encode(self, text: str, src_lang: str | None = None) -> list[int]:
        if src_lang is None:
            return self.body(text, add_special_tokens=True)
        codes = self.languages["language_codes"]
        return [codes[src_lang], *self.body(text), self.languages["source_eos_token_id"]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("m2m100")
    return {(kind, layout): write_m2m100_tokenizer(root / f"{kind}-{layout}", kind, layout)
            for kind, layout in FOLDERS}


@pytest.fixture(scope="module")
def converted(folders) -> dict[tuple[str, str], _Converted]:
    return {key: _Converted(folder) for key, folder in folders.items()}


def _texts(sentences: list[str]) -> list[str]:
    return sentences + HARD + SPECIAL_TEXTS + [s.upper() for s in sentences[:300]]


@pytest.mark.parametrize("key", FOLDERS, ids=["-".join(k) for k in FOLDERS])
def test_source_ids_match_m2m100tokenizer(folders, converted, sentences, key):
    """Every shared sentence, the hard texts (non-Latin scripts, unknown characters, whitespace runs, the empty
    string) and special tokens in text: M2M100Tokenizer's input_ids, for the saved language and for src_lang."""
    reference, mine = _reference(folders[key]), converted[key]
    texts = _texts(sentences)
    pairs = {None: [], "fr": [], "zh": []}
    for src_lang, found in pairs.items():
        if src_lang is not None:
            reference.src_lang = src_lang
        found += [(mine.encode(text, src_lang), reference(text)["input_ids"]) for text in texts]
    if key[0] == "bpe":
        for found in pairs.values():
            assert [m for m, _ in found] == [r for _, r in found]
    else:  # Unigram: exact Viterbi ties may come out in another order (see test_spm._check_all)
        for found in pairs.values():
            _check_all(found, texts)
    print(f"\n{key}: ids identical on {len(texts)} texts x 3 source languages")
    # the texts reach unknown text that vocab.json has, and pieces it lacks (which read <unk>)
    assert mine.hits > 0
    sp = spm.SentencePieceProcessor(model_file=str(folders[key] / "sentencepiece.bpe.model"))
    vocab = json.loads((folders[key] / "vocab.json").read_text(encoding="utf-8"))
    missing = {sp.id_to_piece(i) for i in range(sp.get_piece_size())} - vocab.keys()
    assert sum(bool(missing.intersection(sp.encode(text, out_type=str))) for text in texts) > 10


@pytest.mark.parametrize("key", FOLDERS, ids=["-".join(k) for k in FOLDERS])
def test_decode_matches_m2m100tokenizer(folders, converted, sentences, key):
    """decode(skip_special_tokens=True) of encoded texts and of random ids over the whole model vocabulary
    (language ids, ids past vocab.json that read <unk>, pieces sentencepiece does not know)."""
    reference, target = _reference(folders[key]), converted[key].target
    rng = random.Random(0)
    seqs = [reference(text)["input_ids"] for text in _texts(sentences)]
    seqs += [[rng.randrange(VOCAB) for _ in range(rng.randrange(1, 30))] for _ in range(3000)]
    for ids in seqs:
        assert target.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True), ids
    print(f"\n{key}: decode identical on {len(seqs)} id sequences")


def test_decode_with_clean_up_spaces(folders, converted):
    """With clean_up_tokenization_spaces the runtime's Decoder applies transformers' clean-up after the decode."""
    reference = _reference(folders["bpe", "hub"], clean_up_tokenization_spaces=True)
    decoder = Decoder(converted["bpe", "hub"].target, True)
    rng = random.Random(1)
    for _ in range(1500):
        ids = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 30))]
        assert decoder.decode(ids) == reference.decode(ids, skip_special_tokens=True), ids


@pytest.mark.parametrize("key", FOLDERS, ids=["-".join(k) for k in FOLDERS])
def test_language_settings(folders, converted, key):
    """Every code of the class's list with get_lang_id's id, the code first, </s> last."""
    reference, settings = _reference(folders[key]), converted[key].languages
    assert len(settings["language_codes"]) == 100
    assert settings["language_codes"] == {code: reference.get_lang_id(code) for code in settings["language_codes"]}
    assert settings["source_eos_token_id"] == reference.eos_token_id
    assert settings["language_position"] == "prefix"


def test_wmt21_language_codes(tmp_path, sentences):
    folder = write_m2m100_tokenizer(tmp_path / "wmt21", language_codes="wmt21")
    reference, mine = _reference(folder), _Converted(folder)
    assert mine.languages["language_codes"] == {c: reference.get_lang_id(c) for c in ("cs", "de", "en", "ha", "is",
                                                                                      "ja", "ru", "zh")}
    reference.src_lang = "ja"
    assert [mine.encode(t, "ja") for t in sentences[:100]] == [reference(t)["input_ids"] for t in sentences[:100]]


# ---------------------------------------------------------------- folders it refuses


@pytest.fixture
def hub(folders, tmp_path) -> Path:
    to = tmp_path / "m2m"
    shutil.copytree(folders["bpe", "hub"], to)
    return to


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **changes}))


@pytest.mark.parametrize("name", ["vocab.json", "sentencepiece.bpe.model"])
def test_missing_file_is_named(hub, name):
    (hub / name).unlink()
    with pytest.raises(ConversionError, match=name.replace(".", r"\.")):
        m2m100_tokenizers(hub, VOCAB)


def test_broken_spm_model_raises_conversion_error(hub):
    (hub / "sentencepiece.bpe.model").write_bytes((hub / "sentencepiece.bpe.model").read_bytes()[:500])
    with pytest.raises(ConversionError, match="sentencepiece"):
        m2m100_tokenizers(hub, VOCAB)


def test_model_vocabulary_too_small(hub):
    with pytest.raises(ConversionError, match="vocab_size 700"):
        m2m100_tokenizers(hub, 700)


def test_added_token_that_is_not_special_is_unsupported(hub):
    (hub / "added_tokens.json").write_text(json.dumps({"[MASK]": 900}))
    with pytest.raises(UnsupportedModelError, match="MASK"):
        m2m100_tokenizers(hub, VOCAB)


@pytest.mark.parametrize("changes, error, message", [
    ({"language_codes": "m2m200"}, UnsupportedModelError, "language_codes"),
    ({"src_lang": "xx"}, ConversionError, "src_lang 'xx'"),
    ({"unk_token": "<oov>"}, ConversionError, "unknown token '<oov>'"),
])
def test_bad_tokenizer_config(hub, changes, error, message):
    _edit_json(hub / "tokenizer_config.json", **changes)
    if "unk_token" in changes:
        _edit_json(hub / "special_tokens_map.json", **changes)
    with pytest.raises(error, match=message):
        m2m100_tokenizers(hub, VOCAB)


def test_vocab_with_gaps_is_unsupported(hub):
    vocab = json.loads((hub / "vocab.json").read_text())
    vocab[next(iter(set(vocab) - {"<s>", "<pad>", "</s>", "<unk>"}))] = 5000
    (hub / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(UnsupportedModelError, match="gaps"):
        m2m100_tokenizers(hub, VOCAB)


@pytest.mark.parametrize("files", [["vocab.json"], ["sentencepiece.bpe.model"],
                                   ["vocab.json", "sentencepiece.bpe.model", "tokenizer_config.json"]],
                         ids=["vocab-only", "spm-only", "nllb-class"])
def test_other_m2m_100_folders_without_tokenizer_json_are_refused_as_before(hub, tmp_path, files):
    """An m2m_100 folder without tokenizer.json that is not M2M-100's own layout (a missing file, or another
    tokenizer class such as NLLB's slow-only folders): the converter's usual error, before it reads any weights."""
    from tinybert_convert import convert

    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "m2m_100", "vocab_size": VOCAB}))
    for name in files:
        shutil.copy(hub / name, folder / name)
    if "tokenizer_config.json" in files:
        _edit_json(folder / "tokenizer_config.json", tokenizer_class="NllbTokenizer")
    with pytest.raises(ConversionError, match="no tokenizer.json"):
        convert(folder, tmp_path / "out.safetensors")
