"""M2M-100's own tokenizer folder rebuilt as ``tokenizers`` Tokenizers: transformers' slow-only ``M2M100Tokenizer``.

facebook/m2m100_418M and m2m100_1.2B ship ``sentencepiece.bpe.model`` (a SentencePiece BPE model), ``vocab.json``
(fairseq's dictionary, piece → model id: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, then pieces in another
order than their SentencePiece ids, and not all of them), ``tokenizer_config.json`` and ``special_tokens_map.json``,
and no ``tokenizer.json``. M2M100Tokenizer splits its special tokens off the text, segments the rest with
sentencepiece (``encode(text, out_type=str)``), looks each piece up in vocab.json (``<unk>`` if it is not
there) and puts ``[__xx__] … </s>`` around it for the source language; the language tokens ``__xx__`` take the
ids after vocab.json, in the order of its code list (``language_codes``: "m2m100" or "wmt21"). Decoding turns
ids back into pieces (an id it does not know reads ``<unk>``), runs sentencepiece's decode on the pieces between
special tokens and strips the result.

``m2m100_tokenizers`` gives what the tinybert file stores, as for Marian (convert/spm.py): a source tokenizer
with SentencePiece ids and ``source_id_map`` to model ids, the unknown text vocab.json knows, a target
tokenizer over model ids that decodes as M2M100Tokenizer, and the language fields of Seq2SeqConfig.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, processors

from tinybert.errors import ConversionError, UnsupportedModelError

from . import files
from .spm import (
    _HIDDEN_CLOSE,
    _HIDDEN_OPEN,
    _PY_WHITESPACE,
    _SPACE,
    _SPECIAL_ATTRIBUTES,
    BPE,
    BYTE,
    CONTROL,
    NORMAL,
    UNUSED,
    USER_DEFINED,
    SpmModel,
    _exact,
    _onig_escape,
    _read_bytes,
    _read_vocab,
    _token_text,
    build_tokenizer,
    parse_model,
)

SPM_FILE = "sentencepiece.bpe.model"
_NEEDED_BY = "M2M-100 tokenizers"
# transformers' FAIRSEQ_LANGUAGE_CODES: the language tokens' ids follow vocab.json in this order
M2M100_LANGUAGES = {
    "m2m100": ("af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy", "da", "de",
               "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha", "he", "hi", "hr",
               "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk", "km", "kn", "ko", "lb", "lg",
               "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my", "ne", "nl", "no", "ns", "oc", "or",
               "pa", "pl", "ps", "pt", "ro", "ru", "sd", "si", "sk", "sl", "so", "sq", "sr", "ss", "su", "sv", "sw",
               "ta", "th", "tl", "tn", "tr", "uk", "ur", "uz", "vi", "wo", "xh", "yi", "yo", "zh", "zu"),
    "wmt21": ("en", "ha", "is", "ja", "cs", "ru", "zh", "de"),
}
_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
# Marks the target decoder puts on token texts until it has joined them (Unicode noncharacters, as the
# hidden names of convert/spm.py): a piece's leading "▁" (dropped at the start of a decoded stretch), a piece
# sentencepiece does not know (copied as it is), a "▁" that stays one, the end of a special token's text.
_LEAD, _VERBATIM, _KEEP, _STRETCH = "\ufdd2", "\ufdd3", "\ufdd4", "\ufdd5"
_MARKS = frozenset(_HIDDEN_OPEN + _HIDDEN_CLOSE + _LEAD + _VERBATIM + _KEEP + _STRETCH)


def is_m2m100_folder(folder: Path) -> bool:
    """An M2M-100 tokenizer folder as facebook/m2m100_* ship it: sentencepiece.bpe.model and vocab.json, no
    tokenizer.json, and no other tokenizer class named (NLLB's slow-only folders hold the same model file)."""
    present = [(folder / name).is_file() for name in (SPM_FILE, "vocab.json", "tokenizer.json")]
    if present != [True, True, False]:
        return False
    if not (folder / "tokenizer_config.json").is_file():
        return True
    return files.read_json(folder, "tokenizer_config.json", dict).get("tokenizer_class", "M2M100Tokenizer") == \
        "M2M100Tokenizer"


@dataclass
class M2M100Tokenizers:
    """What a tinybert file keeps of an M2M-100 tokenizer folder (format keys in brackets)."""

    source: str                 # [tokenizer] tokenizer.json text: SentencePiece ids, special tokens after them
    target: str                 # [target_tokenizer] decodes model ids as M2M100Tokenizer.decode(skip specials)
    id_map: list[int]           # [source_id_map] model id of each id ``source`` produces
    unknown_pieces: dict        # [source_unknown_pieces] unknown text vocab.json knows
    language_settings: dict     # Seq2SeqConfig's language_codes, language_position, source_eos_token_id


@dataclass
class _Vocabulary:
    encoder: dict[str, int]      # vocab.json
    languages: dict[str, int]    # code → model id ("fr" → id of "__fr__")
    specials: dict[str, int]     # M2M100Tokenizer's special tokens → ids, in its order
    unk: str
    eos: str
    src_lang: str

    def token_id(self, piece: str) -> int:
        """M2M100Tokenizer's id of a piece: special tokens, then language tokens, then vocab.json, else <unk>."""
        if piece in self.specials:
            return self.specials[piece]
        if piece.startswith("__") and piece.endswith("__") and piece[2:-2] in self.languages:
            return self.languages[piece[2:-2]]
        return self.encoder.get(piece, self.encoder[self.unk])


def _special_text(value: object, where: str) -> str | None:
    """A special token from tokenizer_config.json / special_tokens_map.json (a string or an AddedToken dict)."""
    if isinstance(value, dict) and any(value.get(flag) for flag in ("lstrip", "rstrip", "single_word")):
        raise UnsupportedModelError(f"{where}: special token {value.get('content')!r} strips or matches whole words "
                                    "only; such tokens are not supported")
    return _token_text(value)


def _settings(folder: Path) -> dict:
    """The tokenizer's init arguments as transformers' from_pretrained gathers them: tokenizer_config.json, then
    (for folders saved without ``added_tokens_decoder``) special_tokens_map.json over it."""
    config_path = folder / "tokenizer_config.json"
    init = dict(files.read_json(folder, config_path.name, dict)) if config_path.is_file() else {}
    if "additional_special_tokens" in init and not init.get("extra_special_tokens"):
        init["extra_special_tokens"] = init.pop("additional_special_tokens")
    if "added_tokens_decoder" not in init and (folder / "special_tokens_map.json").is_file():
        for key, value in files.read_json(folder, "special_tokens_map.json", dict).items():
            if key == "extra_special_tokens" and isinstance(value, list):
                value = [*(init.get("extra_special_tokens") or []), *value]
            init[key] = value
    return init


def _added_tokens(folder: Path, init: dict) -> dict[str, int]:
    """Tokens with fixed ids: tokenizer_config.json's added_tokens_decoder, or a legacy added_tokens.json."""
    where = folder / "tokenizer_config.json"
    if "added_tokens_decoder" in init:
        table = init["added_tokens_decoder"]
        if not isinstance(table, dict):
            raise ConversionError(f"{where}: added_tokens_decoder must be an object")
    elif (folder / "added_tokens.json").is_file():
        where = folder / "added_tokens.json"
        table = {str(v) if isinstance(v, int) else v: k for k, v in files.read_json(folder, where.name, dict).items()}
    else:
        return {}
    added = {}
    for key, value in table.items():
        text = _special_text(value, str(where))
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ConversionError(f"{where}: added token {key!r} has no integer id") from None
        if text is None:
            raise ConversionError(f"{where}: added token {key} has no content")
        added[text] = index
    return added


def _vocabulary(folder: Path, vocab_size: int) -> _Vocabulary:
    init = _settings(folder)
    where = folder / "tokenizer_config.json"
    encoder = _read_vocab(folder / "vocab.json", _NEEDED_BY)
    if sorted(encoder.values()) != list(range(len(encoder))):
        raise UnsupportedModelError(f"{folder / 'vocab.json'}: its ids are not 0 … {len(encoder) - 1} without gaps")
    for piece in encoder:
        if not piece or _MARKS.intersection(piece):
            raise UnsupportedModelError(f"{folder / 'vocab.json'}: piece {piece!r} is empty or holds a Unicode "
                                        "noncharacter U+FDD0…U+FDD5")
    codes_name = init.get("language_codes", "m2m100")
    if codes_name not in M2M100_LANGUAGES:
        raise UnsupportedModelError(f"{where}: language_codes {codes_name!r} is not one of {list(M2M100_LANGUAGES)}")
    codes = M2M100_LANGUAGES[codes_name]
    languages = {code: len(encoder) + i for i, code in enumerate(codes)}
    lang_tokens = {f"__{code}__": index for code, index in languages.items()}
    if len(encoder) + len(codes) > vocab_size:
        raise ConversionError(f"{folder}: vocab.json has {len(encoder)} pieces and {len(codes)} language tokens follow "
                              f"them, more than the model's vocab_size {vocab_size}")
    if lang_tokens.keys() & encoder.keys():
        raise UnsupportedModelError(f"{folder / 'vocab.json'}: it holds language tokens "
                                    f"{sorted(lang_tokens.keys() & encoder.keys())[:5]}")

    named = {attr: _special_text(init.get(attr, _DEFAULTS.get(attr)), str(where)) for attr in _SPECIAL_ATTRIBUTES}
    unk, eos = named["unk_token"], named["eos_token"]
    if unk is None or unk not in encoder:
        raise ConversionError(f"{folder / 'vocab.json'}: the unknown token {unk!r} is not in it")
    if eos is None:
        raise ConversionError(f"{where}: M2M-100 needs an eos_token")
    extra = init["extra_special_tokens"] if "extra_special_tokens" in init else init.get("additional_special_tokens")
    if not isinstance(extra or [], list):
        raise UnsupportedModelError(f"{where}: extra_special_tokens must be a list")
    order: list[str] = []
    for text in [*named.values(), *(_special_text(t, str(where)) for t in extra or [])]:
        if text is not None and text not in order:
            order.append(text)

    # The ids transformers gives special tokens in text: added_tokens_decoder's, then vocab.json's, then new ids
    # after the vocabulary in the order above. They must be the ids the class gives them in its templates.
    added = _added_tokens(folder, init)
    for text in added:
        if text not in order:
            raise UnsupportedModelError(f"{folder}: added token {text!r} is not one of the special tokens; such tokens "
                                        "are not supported")
    in_text = dict(added)
    new = len(encoder.keys() | added.keys())
    for text in order:
        if text not in in_text:
            in_text[text] = encoder[text] if text in encoder else new
            new += text not in encoder
    specials = {}
    for text in order:
        expected = lang_tokens.get(text, encoder.get(text))
        if expected is None:
            raise UnsupportedModelError(f"{folder}: special token {text!r} is neither in vocab.json nor a language "
                                        "token; such tokens are not supported")
        if in_text[text] != expected:
            raise UnsupportedModelError(f"{folder}: M2M100Tokenizer would read {text!r} in text as id {in_text[text]} "
                                        f"but use id {expected} for it; such folders are not supported")
        specials[text] = expected
    for text in specials:
        if _MARKS.intersection(text):
            raise UnsupportedModelError(f"{folder}: special token {text!r} holds a Unicode noncharacter")
    src_lang = init.get("src_lang") or "en"
    if src_lang not in languages:
        raise ConversionError(f"{where}: src_lang {src_lang!r} is not one of the {codes_name} language codes")
    return _Vocabulary(encoder, languages, specials, unk, eos, src_lang)


def _template_name(text: str, what: str) -> str:
    if not text or any(c.isspace() for c in text) or ":" in text or text.startswith("$"):
        raise UnsupportedModelError(f"{what}: special token {text!r} cannot go into a template")
    return text


def _source(v: _Vocabulary, model: SpmModel, what: str) -> tuple[Tokenizer, list[int], dict]:
    tokenizer = build_tokenizer(model, what)
    # M2M100Tokenizer splits its special tokens off the raw text before sentencepiece sees it.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in v.specials])
    unk_id = v.encoder[v.unk]
    ids = [v.token_id(p.piece) if p.type in (NORMAL, USER_DEFINED, UNUSED, BYTE) else unk_id for p in model.pieces]
    for text, index in v.specials.items():
        at = tokenizer.token_to_id(text)
        if at is None:
            raise ConversionError(f"{what}: special token {text!r} did not get an id")
        ids += [unk_id] * (at + 1 - len(ids))
        ids[at] = index
    # Without src_lang the source is [__src_lang__] text </s>; a language token that is not special (folders
    # saved by transformers 5) gets an id of its own in the map, beyond the tokenizer's.
    code = f"__{v.src_lang}__"
    code_at = tokenizer.token_to_id(code) if code in v.specials else None
    if code_at is None:
        code_at = len(ids)
        ids.append(v.languages[v.src_lang])
    eos_at = tokenizer.token_to_id(v.eos)
    code, eos = _template_name(code, what), _template_name(v.eos, what)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=[code, "$A", eos], pair=[code, "$A", "$B", eos], special_tokens=[(code, code_at), (eos, eos_at)])
    # sentencepiece hands text it has no pieces for to M2M100Tokenizer as that text, which it looks up. BPE
    # tokenizers name such a token <unk>, so the runtime reads its text in the source (its offsets); the Unigram
    # tokenizer's token is the text itself.
    unknown: dict = {}
    if not model.byte_fallback:
        known = model.known_chars
        texts = [*v.encoder, *(f"__{code}__" for code in v.languages)]
        pieces = {t: v.token_id(t) for t in texts if not any(c in known for c in t)}
        unknown = {"unk_id": model.unk_id, "pieces": {t: i for t, i in pieces.items() if i != unk_id}}
        if model.model_type == BPE:
            unknown["match"] = "text"
    return tokenizer, ids, unknown


def _target(v: _Vocabulary, model: SpmModel, vocab_size: int, what: str) -> Tokenizer:
    """A WordLevel tokenizer over the model's ids whose ``decode(ids, skip_special_tokens=True)`` is
    M2M100Tokenizer's: the special ids skipped, every other id turned into its piece (a language token for
    language ids, ``<unk>`` for ids outside vocab.json), sentencepiece's decode of the pieces between those that
    read as special tokens (which stay as their text), Python's str.strip() of the whole."""
    if model.denormalizer_charsmap:
        raise UnsupportedModelError(f"{what}: SentencePiece denormalization rules are not supported")
    kinds = {p.piece: p.type for p in model.pieces}
    by_id = {i: t for t, i in v.encoder.items()} | {i: f"__{c}__" for c, i in v.languages.items()}
    special_ids = {i: t for t, i in v.specials.items()}
    names: dict[str, int] = {}
    literals: dict[str, int] = {}
    for i in range(vocab_size):
        text = special_ids.get(i)
        if text is None:
            text = by_id.get(i, v.unk)
            if text in v.specials:       # not skipped, and kept as its text between decoded stretches
                text = f"{_HIDDEN_OPEN}L{literals.setdefault(text, len(literals))}.{i}{_HIDDEN_CLOSE}"
            elif text not in kinds:      # sentencepiece copies a piece it does not know
                text = _VERBATIM + text.replace(_SPACE, _KEEP)
        names[text] = i
    if len(names) != vocab_size:
        raise UnsupportedModelError(f"{what}: two model ids decode to the same piece")
    tokenizer = Tokenizer(models.WordLevel(names, unk_token=v.unk))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in v.specials])
    for text, index in v.specials.items():
        if tokenizer.token_to_id(text) != index:
            raise ConversionError(f"{what}: special token {text!r} did not keep its id {index}")

    steps: list[decoders.Decoder] = []
    for text, k in literals.items():
        steps.append(decoders.Replace(
            Regex(rf"\A{_onig_escape(_HIDDEN_OPEN)}L{k}\.\d+{_onig_escape(_HIDDEN_CLOSE)}\z"),
            text.replace(_SPACE, _KEEP) + _STRETCH))
    control = [t for t in names if kinds.get(t) == CONTROL and t not in v.specials]
    if control:  # decode drops control pieces
        steps.append(decoders.Replace(_exact(control), ""))
    unk_piece = model.pieces[model.unk_id].piece
    if unk_piece in names and unk_piece not in v.specials:
        steps.append(decoders.Replace(_exact([unk_piece]), model.unk_surface.replace(_SPACE, _KEEP)))
    # At the start of a stretch sentencepiece drops the first piece's "▁" (with remove_extra_whitespaces, that of
    # every piece while the text is still empty); elsewhere "▁" is a space.
    drop = model.add_dummy_prefix or model.remove_extra_whitespaces
    if drop:
        steps.append(decoders.Replace(Regex(rf"\A{_onig_escape(_SPACE)}"), _LEAD))
    steps.append(decoders.Replace(_SPACE, " "))
    if model.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if drop:
        many = "+" if model.remove_extra_whitespaces else ""
        steps.append(decoders.Replace(Regex(rf"(?:\A|{_onig_escape(_STRETCH)}){_onig_escape(_LEAD)}{many}"), ""))
    whitespace = "[" + _onig_escape(_PY_WHITESPACE) + "]"
    steps += [decoders.Replace(_LEAD, " "), decoders.Replace(_STRETCH, ""), decoders.Replace(_VERBATIM, ""),
              decoders.Replace(_KEEP, _SPACE), decoders.Replace(Regex(rf"\A{whitespace}+|{whitespace}+\z"), "")]
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def m2m100_tokenizers(folder: Path, vocab_size: int) -> M2M100Tokenizers:
    """The tokenizers of an M2M-100 folder (sentencepiece.bpe.model, vocab.json, tokenizer_config.json /
    special_tokens_map.json) for a model of ``vocab_size`` ids: see the module docstring. The source tokenizer
    with its id map and unknown-text table reproduces ``M2M100Tokenizer(text)["input_ids"]`` for the language
    the tokenizer was saved with (``[code] text </s>``); the Translator builds that template itself for a
    ``src_lang``. ConversionError names a missing or broken file; UnsupportedModelError an unsupported feature.
    """
    folder = Path(folder)
    what = str(folder / SPM_FILE)
    v = _vocabulary(folder, vocab_size)
    model = parse_model(_read_bytes(folder / SPM_FILE, _NEEDED_BY), what)
    source, id_map, unknown = _source(v, model, what)
    target = _target(v, model, vocab_size, what)
    settings = {"language_codes": dict(sorted(v.languages.items())), "language_position": "prefix",
                "source_eos_token_id": v.specials[v.eos] if v.eos in v.specials else v.encoder[v.eos]}
    return M2M100Tokenizers(source.to_str(), target.to_str(), id_map, unknown, settings)
