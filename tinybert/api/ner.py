"""Token classification (NER) post-processing: per-token logits → entities.

This reproduces what ``transformers.pipeline("token-classification")`` returns (checked against
transformers 5.x): the same softmax, the same subword heuristics, the same grouping of B-/I- tags,
the same ``word`` strings and the same merging of overlapping windows when a long text is split
with a stride. The model itself is not involved: the caller runs it and hands over the logits.

The quirks of the reference are kept on purpose, because matching it is the point:

- ``word`` is the raw vocabulary token for ``"none"`` (``"##ing"``, ``"Ġworld"``) and
  ``decoder.decode(tokens)`` of the grouped tokens otherwise; for the word strategies the already
  decoded words are decoded a second time when entities are grouped.
- an unknown token's ``word`` is the original text under its offsets.
- the per-token score is computed in float32; group scores are float32 means.
- ``ignore_labels`` filters each window before overlapping windows are merged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    import tokenizers

__all__ = ["AGGREGATIONS", "TokenWindow", "entities"]

AGGREGATIONS = ("none", "simple", "first", "average", "max")

# Unknown-token spellings to fall back on when the tokenizer model does not expose its unk token
# (Unigram models do not), mirroring the `unk_token` of the usual tokenizer configs.
_UNK_SPELLINGS = ("<unk>", "[UNK]")


@dataclass
class TokenWindow:
    """One window of tokens as fed to the model, and the model's logits for it."""

    input_ids: np.ndarray      # int [T], the ids fed to the model for this window (with special tokens)
    offsets: np.ndarray        # int [T, 2], character offsets into the ORIGINAL text (Python str indices)
    special_mask: np.ndarray   # bool [T], True for special tokens ([CLS], [SEP], <s>, pad ...)
    logits: np.ndarray         # float32 [T, num_labels]


def entities(
    text: str,
    windows: list[TokenWindow],
    id2label: Sequence[str] | Mapping[int, str],
    aggregation: str,
    tokenizer: tokenizers.Tokenizer,
    ignore_labels: tuple[str, ...] = ("O",),
    *,
    unk_token_id: int | None = None,
) -> list[dict]:
    """Entities for one text, as transformers' token-classification pipeline returns them.

    Args:
        text: the original text; every window's offsets index into it.
        windows: the encodings of ``text`` fed to the model, in order. Several windows (from
            truncation with a stride and overflowing tokens) are merged as the pipeline merges them.
        id2label: label name of each logit column.
        aggregation: one of ``AGGREGATIONS`` (any letter case).
        tokenizer: the ``tokenizers.Tokenizer`` that produced the windows; gives token strings,
            the decoder for ``word`` and the subword heuristic.
        ignore_labels: labels (``entity`` for ``"none"``, ``entity_group`` otherwise) to drop.
        unk_token_id: the unknown token's id, if the tokenizer model does not tell it.

    Returns:
        For ``"none"``, one dict per kept token with keys ``entity, score, index, word, start, end``;
        otherwise one dict per group with keys ``entity_group, score, word, start, end``. Scores
        are Python floats, positions Python ints.

    Raises:
        InputError: unknown aggregation, or windows whose arrays disagree in shape.
    """
    # Case-insensitive like the pipeline, which looks the strategy up by the upper-cased name.
    name = aggregation.lower() if isinstance(aggregation, str) else None
    if name not in AGGREGATIONS:
        raise InputError(f"unknown aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}")
    aggregation = name
    if not isinstance(text, str):
        raise InputError(f"text must be a string, got {type(text).__name__}")
    if unk_token_id is None:
        unk_token_id = _unk_id(tokenizer)
    word_aware = bool(getattr(tokenizer.model, "continuing_subword_prefix", None))
    ignore = tuple(ignore_labels)

    found: list[dict] = []
    for n, window in enumerate(windows):
        input_ids, offsets, special, logits = _check_window(window, n, len(id2label))
        scores = _softmax(logits)
        pre = _gather_pre_entities(text, input_ids, offsets, special, scores, tokenizer, word_aware, unk_token_id)
        grouped = _aggregate(pre, aggregation, id2label, tokenizer)
        found.extend(e for e in grouped if e.get("entity") not in ignore and e.get("entity_group") not in ignore)
    if len(windows) > 1:
        found = _merge_overlapping(found)
    return [_to_python(e) for e in found]


def _unk_id(tokenizer: tokenizers.Tokenizer) -> int | None:
    unk = getattr(tokenizer.model, "unk_token", None)
    if unk is not None:
        return tokenizer.token_to_id(unk)
    specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    for spelling in _UNK_SPELLINGS:
        if spelling in specials:
            return specials[spelling]
    return None


def _check_window(window: TokenWindow, n: int, num_labels: int) -> tuple[np.ndarray, ...]:
    input_ids = np.asarray(window.input_ids)
    offsets = np.asarray(window.offsets)
    special = np.asarray(window.special_mask).astype(bool)
    # The pipeline always sees float32 logits (it upcasts half precision), so scores are float32 too.
    logits = np.asarray(window.logits, dtype=np.float32)
    t = input_ids.shape[0] if input_ids.ndim == 1 else -1
    if t < 0 or offsets.shape != (t, 2) or special.shape != (t,) or logits.ndim != 2 or logits.shape[0] != t:
        raise InputError(
            f"windows[{n}]: expected input_ids [T], offsets [T, 2], special_mask [T], logits [T, L]; got "
            f"{input_ids.shape}, {offsets.shape}, {special.shape}, {logits.shape}"
        )
    if logits.shape[1] != num_labels:
        raise InputError(f"windows[{n}]: logits have {logits.shape[1]} labels but id2label has {num_labels}")
    return input_ids, offsets, special, logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    maxes = np.max(logits, axis=-1, keepdims=True)
    shifted_exp = np.exp(logits - maxes)
    return shifted_exp / shifted_exp.sum(axis=-1, keepdims=True)


def _gather_pre_entities(
    text: str,
    input_ids: np.ndarray,
    offsets: np.ndarray,
    special: np.ndarray,
    scores: np.ndarray,
    tokenizer: tokenizers.Tokenizer,
    word_aware: bool,
    unk_token_id: int | None,
) -> list[dict]:
    pre = []
    for idx, token_scores in enumerate(scores):
        if special[idx]:
            continue
        token_id = int(input_ids[idx])
        word = tokenizer.id_to_token(token_id)
        start, end = int(offsets[idx, 0]), int(offsets[idx, 1])
        word_ref = text[start:end]
        if word_aware:
            # WordPiece-like vocabularies mark continuations ("##"), which changes the token's length.
            is_subword = len(word) != len(word_ref)
        else:
            # The reference's fallback for BPE / SentencePiece: a token not preceded by a plain space
            # continues the previous word (so punctuation glued to a word joins it).
            is_subword = start > 0 and " " not in text[start - 1:start + 1]
        if token_id == unk_token_id:
            word = word_ref
            is_subword = False
        pre.append({"word": word, "scores": token_scores, "start": start, "end": end, "index": idx,
                    "is_subword": is_subword})
    return pre


def _aggregate(pre: list[dict], aggregation: str, id2label, tokenizer: tokenizers.Tokenizer) -> list[dict]:
    if aggregation in ("none", "simple"):
        tokens = []
        for p in pre:
            label_idx = int(p["scores"].argmax())
            tokens.append({"entity": id2label[label_idx], "score": p["scores"][label_idx], "index": p["index"],
                           "word": p["word"], "start": p["start"], "end": p["end"]})
        if aggregation == "none":
            return tokens
        return _group_entities(tokens, tokenizer)
    return _group_entities(_aggregate_words(pre, aggregation, id2label, tokenizer), tokenizer)


def _tokens_to_string(tokenizer: tokenizers.Tokenizer, tokens: list[str]) -> str:
    # transformers' convert_tokens_to_string: the decoder on token strings, not decode(ids), because
    # the strings may be original text (unknown tokens) or words decoded once already.
    decoder = tokenizer.decoder
    return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


def _aggregate_word(group: list[dict], aggregation: str, id2label, tokenizer: tokenizers.Tokenizer) -> dict:
    word = _tokens_to_string(tokenizer, [p["word"] for p in group])
    if aggregation == "first":
        scores = group[0]["scores"]
        label_idx = int(scores.argmax())
        score = scores[label_idx]
    elif aggregation == "max":
        # max() keeps the first of equal maxima, as the reference does.
        scores = max(group, key=lambda p: p["scores"].max())["scores"]
        label_idx = int(scores.argmax())
        score = scores[label_idx]
    else:
        average = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
        label_idx = int(average.argmax())
        score = average[label_idx]
    return {"entity": id2label[label_idx], "score": score, "word": word, "start": group[0]["start"],
            "end": group[-1]["end"]}


def _aggregate_words(pre: list[dict], aggregation: str, id2label, tokenizer: tokenizers.Tokenizer) -> list[dict]:
    words = []
    group: list[dict] = []
    for p in pre:
        if group and not p["is_subword"]:
            words.append(_aggregate_word(group, aggregation, id2label, tokenizer))
            group = []
        group.append(p)
    if group:
        words.append(_aggregate_word(group, aggregation, id2label, tokenizer))
    return words


def _get_tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    # Labels without a B-/I- prefix continue a group of the same label.
    return "I", label


def _group_sub_entities(group: list[dict], tokenizer: tokenizers.Tokenizer) -> dict:
    # The group's label strips any "X-" prefix, even prefixes that _get_tag does not recognise.
    label = group[0]["entity"].split("-", 1)[-1]
    score = np.mean(np.nanmean([e["score"] for e in group]))
    return {"entity_group": label, "score": score, "word": _tokens_to_string(tokenizer, [e["word"] for e in group]),
            "start": group[0]["start"], "end": group[-1]["end"]}


def _group_entities(items: list[dict], tokenizer: tokenizers.Tokenizer) -> list[dict]:
    groups = []
    current: list[dict] = []
    for item in items:
        if current:
            bi, tag = _get_tag(item["entity"])
            _, last_tag = _get_tag(current[-1]["entity"])
            # A B- tag always opens a new group, even after the same type.
            if tag != last_tag or bi == "B":
                groups.append(_group_sub_entities(current, tokenizer))
                current = []
        current.append(item)
    if current:
        groups.append(_group_sub_entities(current, tokenizer))
    return groups


def _merge_overlapping(found: list[dict]) -> list[dict]:
    # Windows overlap by the stride, so an entity can be found twice (or cut short in one window):
    # among entities whose start falls inside the previous kept one, keep the longest, then the
    # most confident. The sort is stable, so ties keep window order.
    if not found:
        return found
    found = sorted(found, key=lambda e: e["start"])
    merged = []
    previous = found[0]
    for entity in found:
        if previous["start"] <= entity["start"] < previous["end"]:
            length = entity["end"] - entity["start"]
            previous_length = previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged


def _to_python(entity: dict) -> dict:
    out = dict(entity)
    out["score"] = float(out["score"])
    for key in ("index", "start", "end"):
        if key in out:
            out[key] = int(out[key])
    return out
