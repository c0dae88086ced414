"""8-bit activations for int8 models: calibration and smoothing (SmoothQuant, Xiao et al. 2022).

The runtime quantises each layer's input per row (per token). At 12 bits that is as good as float
(all-MiniLM-L6-v2 cosine 0.9996); at 8 bits the few outlier channels of BERT-family activations set
every row's scale and the rest lose their precision. But 8-bit inputs halve the AVX-512 VNNI work
(one byte plane instead of two), so the converter gives 8 bits to the layers that keep their
accuracy with it. (8-bit rows are centred on their midpoint at run time, see kernels/quant.py: the
GELU outputs that ``mlp.down`` reads lie in [-0.17, max], and centring gives them a grid twice as fine.)

* ``attn.qkv`` and ``mlp.up`` read a LayerNorm output, where the outliers live. They are smoothed:
  column k of the weight is multiplied by ``s[k] = amax_x[k] ** a / amax_w[k] ** (1 - a)`` (a = 0.5)
  before the weight is quantised, and the runtime divides the input by ``s`` (``T.smooth``), so
  ``x @ W.T`` is unchanged while the input's channel ranges are evened out. ``amax_x`` comes from
  running the float model over ``calibration.txt`` (63 English sentences, none of them among the
  first 500 of the shared test sentences that the fidelity tests use).
* ``attn.out`` and ``mlp.down`` get 8 bits as they are (``s = 1``): smoothing the GELU outputs
  measured no better.

The converter measures rather than guesses: it runs int8 versions of the model over the
calibration text, fastest first, and keeps the first whose hidden states stay within ERROR_BUDGET of
the float model's (mean over tokens of 1 - cosine): every layer at 8 bits; else attn.qkv, attn.out
and mlp.up at 8 bits plus, one layer at a time, each mlp.down that still fits (the cheapest first).
all-MiniLM-L6-v2: 12 bits everywhere 4.8e-4, every layer at 8 bits 7.5e-4 (kept; with symmetric
8-bit rows it was 1.34e-3, and only two mlp.down layers fitted).

Sentence embeddings of all-MiniLM-L6-v2 (1,000 shared sentences, mean-pooled cosine vs transformers
fp32): 12 bits everywhere 0.99957 mean / 0.9992 p01; every layer at 8 bits 0.99943 / 0.9990.

Decoders and encoder-decoders (``generation_activation_tensors``) are judged by their logits, teacher-forced
over the calibration text (an encoder-decoder reads each sentence and predicts it), which is what beam
search and sampling read: every linear, the LM head included, gets 8-bit inputs (smoothed where the
input is a norm's output: attn.qkv, cross.q, cross.kv, mlp.up, an untied LM head) if the logits stay
within GENERATION_BUDGET of the float model's; else every linear but the LM head and mlp.down; else 12
bits everywhere. At batch 16 × beam 4 the LM head is most of a decoder step's work (T5-small: 80 %), and
8-bit inputs halve it. A tied LM head cannot be smoothed (its weight is also the token table): it gets
``lm_head.weight.smooth`` = 1, the marker of 8-bit inputs (format.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tinybert import format as fmt
from tinybert.config import DecoderConfig, EncoderConfig, Seq2SeqConfig
from tinybert.errors import ConversionError
from tinybert.layers import KVCache
from tinybert.models.decoder import DecoderModel
from tinybert.models.encoder import EncoderModel
from tinybert.models.seq2seq import Seq2SeqModel
from tinybert.tokenizer import load_tokenizer, pack

from .quantize import quantize_tensors

# Inputs that come from a norm (or the encoder's final norm, for cross.kv): smoothed when 8-bit.
SMOOTHED = ("attn.qkv", "cross.q", "cross.kv", "mlp.up", "lm_head")
ENCODER_SMOOTHED = ("attn.qkv", "mlp.up")     # the encoder's among them
EIGHT_BIT = ("attn.out",)              # 8-bit inputs as they are, wherever anything is
ALPHA = 0.5                            # SmoothQuant migration strength
# Allowed error of the int8 model's hidden states: mean over tokens of 1 - cosine with the float
# model's, the fidelity gate (cosine >= 0.999) applied per token, on the calibration text.
ERROR_BUDGET = 1e-3
# The same measure on the logits of a generation model (mean over predicted tokens of 1 - cosine).
GENERATION_BUDGET = 1e-3
_GENERATION_TOKENS = 48      # calibration tokens per sentence (and per side of an encoder-decoder)
CALIBRATION_TEXT = Path(__file__).with_name("calibration.txt")
_BATCH = 16


class _Observed:
    """Stands in for a layer during the float calibration run: records the largest |input| of each input
    channel, then calls the layer.

    Wrapped from the outside, and put in the block's attribute for that one throw-away model: the runtime
    layer needs no hook for it, and nothing is asked of it but ``in_features`` and being callable, so the
    converter does not depend on Linear's internals. Any other attribute is the layer's.
    """

    def __init__(self, layer) -> None:
        self.layer = layer
        self.amax = np.zeros(layer.in_features, dtype=np.float32)

    def __call__(self, x: np.ndarray, *args, **kwargs) -> np.ndarray:
        if len(x):
            np.maximum(self.amax, np.abs(x).max(axis=0), out=self.amax)
        return self.layer(x, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.layer, name)


def _batches(cfg: EncoderConfig, tokenizer_json: str, texts: list[str]) -> list:
    tokenizer = load_tokenizer(tokenizer_json, cfg.max_length)
    batches = []
    for start in range(0, len(texts), _BATCH):
        batch = pack(tokenizer.encode_batch(texts[start:start + _BATCH]))
        if batch.ids.size == 0:
            continue
        if batch.ids.min() < 0 or batch.ids.max() >= cfg.vocab_size:
            raise ConversionError("the tokenizer produces ids outside the model's vocabulary")
        batches.append(batch)
    return batches


def _run(model: EncoderModel, batches: list) -> np.ndarray:
    return np.concatenate([model(b.ids, np.zeros_like(b.ids), b.starts, np.ones(b.ids.size, dtype=np.uint8))
                           for b in batches])


def _reference(cfg: EncoderConfig, tensors: dict[str, np.ndarray],
               batches: list) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The float model's hidden states, and max |input| per channel of every smoothable layer."""
    model = EncoderModel(cfg, tensors)
    observed: dict[str, _Observed] = {}
    for i, block in enumerate(model.blocks):
        for owner, attr, kind in ((block.attn, "qkv", "attn.qkv"), (block.mlp, "up", "mlp.up")):
            observed[f"{fmt.layer_prefix(i)}{kind}"] = layer = _Observed(getattr(owner, attr))
            setattr(owner, attr, layer)
    hidden = _run(model, batches)
    return hidden, {name: layer.amax for name, layer in observed.items()}


def _error(cfg: EncoderConfig, tensors: dict[str, np.ndarray], batches: list, reference: np.ndarray) -> float:
    """Mean over tokens of 1 - cosine(hidden state, float model's)."""
    hidden = _run(EncoderModel(cfg, tensors), batches)
    cos = (hidden * reference).sum(1) / (np.linalg.norm(hidden, axis=1) * np.linalg.norm(reference, axis=1) + 1e-30)
    return float(np.mean(1.0 - cos))


def _kind(layer: str) -> str:
    """ "decoder.layers.3.mlp.up" → "mlp.up"; "lm_head" → "lm_head"."""
    parts = layer.split(".")
    if "layers" in parts:
        parts = parts[parts.index("layers") + 2:]
    return ".".join(parts)


def smoothed(tensors: dict[str, np.ndarray], ranges: dict[str, np.ndarray],
             layers: set[str]) -> dict[str, np.ndarray]:
    """The float32 tensors with ``layers`` ("layers.3.mlp.down", ...) marked for 8-bit inputs.

    Returns a new dict (to be quantised next): for each such layer ``<name>.weight.smooth`` = s
    (float32 [K]) and, for the SMOOTHED kinds, the weight ``W * s``; s = 1 for the others.
    """
    out = dict(tensors)
    for layer in layers:
        name = layer + ".weight"
        if name not in tensors:     # a tied LM head: 8-bit inputs, no smoothing (format.py)
            out[name + fmt.SMOOTH_SUFFIX] = np.ones(tensors[fmt.EMBED_TOKENS].shape[1], dtype=np.float32)
            continue
        w = tensors[name]
        if _kind(layer) in SMOOTHED:
            a = np.maximum(ranges[layer], np.float32(1e-5))
            wmax = np.maximum(np.abs(w).max(axis=0), np.float32(1e-5))
            s = (a ** ALPHA / wmax ** (1 - ALPHA)).astype(np.float32)
            out[name] = (w * s[None, :]).astype(np.float32)
        else:
            s = np.ones(w.shape[1], dtype=np.float32)
        out[name + fmt.SMOOTH_SUFFIX] = s
    return out


def mixed_activation_tensors(cfg: EncoderConfig, tensors: dict[str, np.ndarray], tokenizer_json: str,
                             texts: list[str] | None = None, report: dict | None = None,
                             progress: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """The encoder's float32 tensors quantised to int8, with 8-bit inputs where they keep the accuracy.

    Runs the float model over the calibration text, then int8 versions, fastest first, and keeps the
    first whose hidden-state error is within ERROR_BUDGET (or no worse than 12-bit inputs
    everywhere, where even that exceeds it): every layer 8-bit; else attn.qkv, attn.out and mlp.up
    8-bit, plus each layer's mlp.down that still fits, those that cost least first; else 12-bit
    inputs everywhere. ``report``, if given, receives the errors measured and the layers chosen; ``progress``
    is called with the name of each model run (the float reference, then each trial) as it starts.
    """
    if texts is None:
        texts = [line for line in CALIBRATION_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    report = {} if report is None else report
    report["chosen"] = []
    batches = _batches(cfg, tokenizer_json, texts)
    plain = quantize_tensors(tensors)
    if not batches:
        return plain
    tell = progress or (lambda label: None)
    tell("float reference")
    reference, ranges = _reference(cfg, tensors, batches)
    tell("12-bit")
    report["12-bit"] = base = _error(cfg, plain, batches, reference)
    budget = max(ERROR_BUDGET, base)

    def trial(layers: set[str]) -> tuple[dict[str, np.ndarray], float]:
        tell(f"8-bit in {len(layers)} layers")
        candidate = quantize_tensors(smoothed(tensors, ranges, layers))
        return candidate, _error(cfg, candidate, batches, reference)

    prefixes = [fmt.layer_prefix(i) for i in range(cfg.num_layers)]
    every = {p + kind for p in prefixes for kind in (*ENCODER_SMOOTHED, *EIGHT_BIT, "mlp.down")}
    best, report["all"] = trial(every)
    chosen = every
    if report["all"] > budget:
        chosen = {p + kind for p in prefixes for kind in (*ENCODER_SMOOTHED, *EIGHT_BIT)}
        best, report["qkv,out,up"] = trial(chosen)
        if report["qkv,out,up"] > budget:
            return plain
        downs = [p + "mlp.down" for p in prefixes]
        alone = {down: trial(chosen | {down})[1] for down in downs}
        for down in sorted(downs, key=alone.__getitem__):
            candidate, error = trial(chosen | {down})
            if error > budget:
                break
            best, chosen = candidate, chosen | {down}
            report["qkv,out,up+" + down] = error
    report["chosen"] = sorted(chosen)
    return best


# ---------------------------------------------------------------------------------------------- generation

def _generation_model(cfg: DecoderConfig | Seq2SeqConfig, tensors: dict[str, np.ndarray]):
    return DecoderModel(cfg, tensors) if isinstance(cfg, DecoderConfig) else Seq2SeqModel(cfg, tensors)


def _generation_linears(model) -> dict[str, tuple[object, str]]:
    """Every linear of a decoder or encoder-decoder: tensor name → (owner, attribute)."""
    stacks = [("", model)] if isinstance(model, DecoderModel) else [("encoder", model.encoder),
                                                                      ("decoder", model.decoder)]
    found: dict[str, tuple[object, str]] = {fmt.LM_HEAD: (model, "lm_head")}
    for stack, part in stacks:
        for i, block in enumerate(part.blocks):
            owners = [(block.attn, ("qkv", "out"), "attn."), (block.mlp, ("up", "down"), "mlp.")]
            if block.cross is not None:
                owners.append((block.cross, ("q", "kv", "out"), "cross."))
            for owner, attrs, kind in owners:
                for attr in attrs:
                    found[fmt.layer_prefix(i, stack) + kind + attr] = (owner, attr)
    return found


def _generation_texts(cfg: DecoderConfig | Seq2SeqConfig, tokenizer_json: str, texts: list[str],
                      id_map: Sequence[int] | None = None) -> list[np.ndarray]:
    limit = min(_GENERATION_TOKENS, cfg.max_positions - 1)
    tokenizer = load_tokenizer(tokenizer_json, limit)
    vocab = cfg.vocab_size if isinstance(cfg, DecoderConfig) else min(cfg.vocab_size, cfg.decoder_vocab_size)
    table = None if id_map is None else np.asarray(id_map, dtype=np.int64)
    seqs = []
    for encoding in tokenizer.encode_batch(texts):
        ids = np.asarray(encoding.ids[:limit], dtype=np.int64)
        if table is not None:
            if ids.size and ids.max() >= table.size:
                raise ConversionError("the tokenizer produces ids outside its id map")
            ids = table[ids]
        ids = ids.astype(np.int32)
        if ids.size < 2:
            continue
        if ids.min() < 0 or ids.max() >= vocab:
            raise ConversionError("the tokenizer produces ids outside the model's vocabulary")
        seqs.append(ids)
    return seqs


def _generation_logits(model, seqs: list[np.ndarray]) -> np.ndarray:
    """Teacher-forced logits of every calibration sentence, one batch of _BATCH sentences at a time: a
    decoder predicts each next token; an encoder-decoder reads the sentence and predicts it after its
    decoder start token."""
    out = []
    for first in range(0, len(seqs), _BATCH):
        batch = seqs[first:first + _BATCH]
        lengths = np.array([s.size for s in batch])
        slots = np.repeat(np.arange(len(batch), dtype=np.int32), lengths)
        positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        if isinstance(model, DecoderModel):
            cache = KVCache(model.config, len(batch), int(lengths.max()))
            out.append(model(np.concatenate(batch), slots, positions, cache))
            continue
        starts = np.zeros(len(batch) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        cache = model.start(model.encode(np.concatenate(batch), starts), starts, int(lengths.max()))
        start = model.config.decoder_start_token_id
        tokens = np.concatenate([np.concatenate([[start], s[:-1]]) for s in batch]).astype(np.int32)
        out.append(model.step(cache, tokens, slots, positions))
    return np.concatenate(out)


def _logit_error(logits: np.ndarray, reference: np.ndarray) -> float:
    cos = (logits * reference).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1) + 1e-30)
    return float(np.mean(1.0 - cos))


def _generation_budget(twelve_bit_error: float) -> float:
    """The logit error an 8-bit variant may reach: GENERATION_BUDGET, or 12-bit inputs' own if higher."""
    return max(GENERATION_BUDGET, twelve_bit_error)


def generation_activation_tensors(cfg: DecoderConfig | Seq2SeqConfig, tensors: dict[str, np.ndarray],
                                  tokenizer_json: str, texts: list[str] | None = None,
                                  report: dict | None = None,
                                  progress: Callable[[str], None] | None = None,
                                  id_map: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """A decoder's or encoder-decoder's float32 tensors quantised to int8, with 8-bit inputs where the logits
    keep their accuracy (see the module docstring). ``report``, if given, receives the errors measured
    (mean 1 - cosine of the logits, and the share of predicted tokens whose argmax differs from the float
    model's) and the layers chosen. ``progress`` is called with the name of each model run as it starts.
    ``id_map`` maps the tokenizer's ids to the model's (a tokenizer over SentencePiece ids: Marian, M2M-100)."""
    if texts is None:
        texts = [line for line in CALIBRATION_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    report = {} if report is None else report
    report["chosen"] = []
    seqs = _generation_texts(cfg, tokenizer_json, texts, id_map)
    plain = quantize_tensors(tensors)
    if not seqs:
        return plain
    tell = progress or (lambda label: None)
    tell("float reference")
    model = _generation_model(cfg, tensors)
    observed = {name: _Observed(getattr(owner, attr)) for name, (owner, attr) in _generation_linears(model).items()}
    for name, (owner, attr) in _generation_linears(model).items():
        setattr(owner, attr, observed[name])
    reference = _generation_logits(model, seqs)
    ranges = {name: layer.amax for name, layer in observed.items()}
    del model, observed
    top = reference.argmax(1)

    def measure(label: str, candidate: dict[str, np.ndarray]) -> float:
        tell(label)
        logits = _generation_logits(_generation_model(cfg, candidate), seqs)
        report[label] = error = _logit_error(logits, reference)
        report[label + " argmax changed"] = float(np.mean(logits.argmax(1) != top))
        return error

    budget = _generation_budget(measure("12-bit", plain))
    every = set(ranges)
    inner = {n for n in every if _kind(n) not in ("lm_head", "mlp.down")}
    for label, layers in (("all", every), ("all but lm_head and mlp.down", inner)):
        candidate = quantize_tensors(smoothed(tensors, ranges, layers))
        if measure(label, candidate) <= budget:
            report["chosen"] = sorted(layers)
            return candidate
    return plain
