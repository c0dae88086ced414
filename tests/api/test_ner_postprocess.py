"""tinybert.api.ner against transformers' token-classification pipeline on the same logits.

The pipeline runs a small random token-classification model end to end; tinybert.api.ner gets that
model's logits for the encodings that ``tokenizers`` produces and must return the same entities.
Two tokenizers cover both subword heuristics of the pipeline: WordPiece (all-MiniLM-L6-v2, which
has a continuing-subword prefix) and a byte-level BPE trained here (which has none).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest

from tinybert.api.ner import AGGREGATIONS, TokenWindow, entities
from tinybert.errors import InputError, TinyBertError

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

# Accents (stripped by the uncased WordPiece), CJK (one token per character for BERT, byte pieces for
# byte-level BPE), emoji (unknown to WordPiece: the word comes from the text), glued punctuation,
# several spaces and a tab, special tokens written in the text (not masked as special), nothing.
UNICODE_TEXTS = [
    "Zoë Müller flew from São Paulo to 東京 😀 yesterday.",
    "Çà et là, naïve café owners in Zürich — 北京大学 and 🤖🚀 robots (re-)opened at 9:30am!",
    "東京タワーは高い。😀🎉🎉 Ünïcödé ﬁne ligatures, Ελληνικά και русский текст.",
    "New  York\tCity's mayor, O'Neill-Smith, met Apple Inc. and the U.N. in   Washington D.C.",
    "A literal [MASK] token, a literal [UNK] one, and <mask>, <s>, </s> and <unk> written out.",
    "",
]

MAX_LENGTH = 512
WINDOW, STRIDE = 24, 8
SCORE_TOL = 1e-4


@dataclass
class Case:
    name: str
    tokenizer_json: str
    make_hf_tokenizer: Callable   # model_max_length → a transformers fast tokenizer
    model: object                 # a transformers *ForTokenClassification in eval mode
    _tokenizers: dict = field(default_factory=dict)
    _windows: dict = field(default_factory=dict)

    def tokenizer(self, max_length: int, stride: int = 0):
        """Our side's tokenizer, as the pipeline configures its own: truncation, no padding."""
        from tokenizers import Tokenizer

        key = (max_length, stride)
        if key not in self._tokenizers:
            tok = Tokenizer.from_str(self.tokenizer_json)
            tok.no_padding()
            tok.enable_truncation(max_length, stride=stride, strategy="longest_first")
            self._tokenizers[key] = tok
        return self._tokenizers[key]


def _scale_classifier(model) -> None:
    import torch

    # Random weights give near-uniform label probabilities; a larger classifier makes labels vary.
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    model.eval()


def _label_config() -> dict:
    return dict(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={x: i for i, x in enumerate(LABELS)})


def _bert_case(minilm_dir) -> Case:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, **_label_config())
    model = BertForTokenClassification(config)
    _scale_classifier(model)
    return Case("bert", (minilm_dir / "tokenizer.json").read_text(encoding="utf-8"),
                lambda n: AutoTokenizer.from_pretrained(str(minilm_dir), model_max_length=n), model)


def _roberta_case(sentences) -> Case:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForTokenClassification

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # A small vocabulary, so that many words are split into several pieces.
    trainer = trainers.BpeTrainer(vocab_size=800, min_frequency=2, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    assert tok.model.continuing_subword_prefix is None  # the fallback heuristic is the point of this case
    tokenizer_json = tok.to_str()

    def make_hf_tokenizer(n):
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token="<s>",
                                       eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                                       sep_token="</s>", mask_token="<mask>", model_max_length=n)

    torch.manual_seed(1)
    config = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=MAX_LENGTH + 2, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, **_label_config())
    model = RobertaForTokenClassification(config)
    _scale_classifier(model)
    return Case("roberta", tokenizer_json, make_hf_tokenizer, model)


_CASES: dict[str, Case] = {}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # These models are tiny: threads only add overhead, and spin badly on a busy machine.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def case(request, minilm_dir, sentences) -> Case:
    if request.param not in _CASES:
        _CASES[request.param] = _bert_case(minilm_dir) if request.param == "bert" else _roberta_case(sentences)
    return _CASES[request.param]


@pytest.fixture(scope="module")
def texts(sentences) -> list[str]:
    return sentences[::25] + UNICODE_TEXTS


@pytest.fixture(scope="module")
def long_texts(sentences) -> list[str]:
    return [" ".join(sentences[i:i + 4]) for i in range(0, 40, 4)] + [" ".join(UNICODE_TEXTS)]


@cache
def _pipeline(case_name: str, max_length: int, aggregation: str | None, ignore_labels: tuple[str, ...] | None):
    from transformers import pipeline

    case = _CASES[case_name]
    kwargs = {}
    if aggregation is not None:
        kwargs["aggregation_strategy"] = aggregation
    if ignore_labels is not None:
        kwargs["ignore_labels"] = list(ignore_labels)
    return pipeline("token-classification", model=case.model, tokenizer=case.make_hf_tokenizer(max_length),
                    device="cpu", **kwargs)


def _expected(case: Case, text: str, aggregation: str | None, ignore_labels=None, max_length=MAX_LENGTH,
              **call_kwargs) -> list[dict]:
    pipe = _pipeline(case.name, max_length, aggregation, ignore_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Tokenizer does not support real words, using fallback heuristic"
        return pipe(text, **call_kwargs)


def _windows(case: Case, text: str, max_length: int = MAX_LENGTH, stride: int = 0) -> list[TokenWindow]:
    """The encodings of ``text`` (overflowing windows included) with the model's logits for each."""
    import torch

    key = (text, max_length, stride)
    if key in case._windows:
        return case._windows[key]
    encoding = case.tokenizer(max_length, stride).encode(text)
    windows = []
    for enc in [encoding, *encoding.overflowing]:
        with torch.no_grad():
            logits = case.model(input_ids=torch.tensor([enc.ids]), attention_mask=torch.tensor([enc.attention_mask]),
                                token_type_ids=torch.tensor([enc.type_ids])).logits[0].numpy()
        windows.append(TokenWindow(np.array(enc.ids), np.array(enc.offsets).reshape(-1, 2),
                                   np.array(enc.special_tokens_mask, dtype=bool), logits))
    case._windows[key] = windows
    return windows


def _ours(case: Case, text: str, windows: list[TokenWindow], aggregation: str, **kwargs) -> list[dict]:
    return entities(text, windows, LABELS, aggregation, case.tokenizer(MAX_LENGTH), **kwargs)


def _assert_same(got: list[dict], expected: list[dict], where: str) -> None:
    assert len(got) == len(expected), f"{where}: {len(got)} entities, pipeline has {len(expected)}\n{got}\n{expected}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert list(g) == list(e), f"{where}[{i}]: keys {list(g)} != {list(e)}"
        assert type(g["score"]) is float and abs(g["score"] - float(e["score"])) <= SCORE_TOL, f"{where}[{i}]: {g} {e}"
        for key in ("start", "end", "index"):
            if key in g:
                assert type(g[key]) is int, f"{where}[{i}]: {key} is {type(g[key]).__name__}"
        assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in e.items() if k != "score"}, (
            f"{where}[{i}]: {g} != {e}")


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_matches_pipeline(case, texts, aggregation):
    hf_tokenizer = _pipeline(case.name, MAX_LENGTH, aggregation, None).tokenizer
    labels = set()
    for n, text in enumerate(texts):
        windows = _windows(case, text)
        assert windows[0].input_ids.tolist() == hf_tokenizer(text)["input_ids"], "the two sides encode differently"
        expected = _expected(case, text, aggregation)
        _assert_same(_ours(case, text, windows, aggregation), expected, f"{case.name} text {n}")
        labels.update(e.get("entity", e.get("entity_group")) for e in expected)
    assert len(labels) >= 3, f"too few labels to test anything: {labels}"
    # id2label as the model config has it (a dict) works too.
    text = texts[1]
    assert entities(text, _windows(case, text), case.model.config.id2label, aggregation,
                    case.tokenizer(MAX_LENGTH)) == _ours(case, text, _windows(case, text), aggregation)


@pytest.mark.parametrize("aggregation", ["none", "simple", "average"])
def test_ignore_labels(case, texts, aggregation):
    # Keeping "O" groups runs of "O" like any other label; ignoring PER drops whole groups.
    for ignore in ((), ("PER", "B-PER", "I-PER", "O")):
        for n, text in enumerate(texts[:20] + UNICODE_TEXTS):
            expected = _expected(case, text, aggregation, ignore_labels=ignore)
            got = _ours(case, text, _windows(case, text), aggregation, ignore_labels=ignore)
            _assert_same(got, expected, f"{case.name} ignore={ignore} text {n}")


def test_word_strategies_are_exercised(case, texts):
    # Guards the data, not the code: the word strategies must regroup some tokens here, otherwise
    # the comparisons above could not tell them from "simple".
    for aggregation in ("first", "average", "max"):
        assert any(_expected(case, t, aggregation) != _expected(case, t, "simple") for t in texts), aggregation


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_stride_windows(case, long_texts, aggregation):
    merged_something = False
    for n, text in enumerate(long_texts):
        windows = _windows(case, text, WINDOW, STRIDE)
        assert len(windows) > 2
        # At call time the pipeline refuses stride with aggregation_strategy="none", but with the default
        # strategy (none) it accepts it and merges the windows' tokens like entities.
        expected = _expected(case, text, None if aggregation == "none" else aggregation, max_length=WINDOW,
                             stride=STRIDE)
        got = _ours(case, text, windows, aggregation)
        _assert_same(got, expected, f"{case.name} stride {aggregation} text {n}")
        per_window = sum(len(_ours(case, text, [w], aggregation)) for w in windows)
        merged_something |= per_window > len(got)
    assert merged_something, "no window overlap produced a duplicate: the merge is untested"


def test_aggregation_names(case, texts):
    # The pipeline upper-cases the name to look the strategy up, so any case is accepted.
    windows = _windows(case, texts[1])
    assert _ours(case, texts[1], windows, "Average") == _ours(case, texts[1], windows, "average")
    for bad in ("mean", "simple ", "", None, 1):
        with pytest.raises(InputError):
            _ours(case, texts[1], windows, bad)
    assert issubclass(InputError, TinyBertError)


def test_bad_windows(case, texts):
    w = _windows(case, texts[1])[0]
    for bad in (TokenWindow(w.input_ids, w.offsets, w.special_mask, w.logits[:, :4]),
                TokenWindow(w.input_ids[1:], w.offsets, w.special_mask, w.logits),
                TokenWindow(w.input_ids, w.offsets[:, :1], w.special_mask, w.logits)):
        with pytest.raises(InputError):
            _ours(case, texts[1], [bad], "simple")
