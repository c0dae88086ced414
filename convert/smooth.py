"""8-bit activations for an int8 encoder: calibration and smoothing (SmoothQuant, Xiao et al. 2022).

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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinybert import format as fmt
from tinybert.config import EncoderConfig
from tinybert.errors import ConversionError
from tinybert.models import EncoderModel
from tinybert.tokenizer import load_tokenizer, pack

from .quantize import quantize_tensors

SMOOTHED = ("attn.qkv", "mlp.up")     # inputs that come from a LayerNorm: smoothed when 8-bit
EIGHT_BIT = ("attn.out",)              # 8-bit inputs as they are, wherever anything is
ALPHA = 0.5                            # SmoothQuant migration strength
# Allowed error of the int8 model's hidden states: mean over tokens of 1 - cosine with the float
# model's, the fidelity gate (cosine >= 0.999) applied per token, on the calibration text.
ERROR_BUDGET = 1e-3
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


def smoothed(tensors: dict[str, np.ndarray], ranges: dict[str, np.ndarray],
             layers: set[str]) -> dict[str, np.ndarray]:
    """The float32 tensors with ``layers`` ("layers.3.mlp.down", ...) marked for 8-bit inputs.

    Returns a new dict (to be quantised next): for each such layer ``<name>.weight.smooth`` = s
    (float32 [K]) and, for the SMOOTHED kinds, the weight ``W * s``; s = 1 for the others.
    """
    out = dict(tensors)
    for layer in layers:
        name = layer + ".weight"
        w = tensors[name]
        if layer.split(".", 2)[2] in SMOOTHED:
            a = np.maximum(ranges[layer], np.float32(1e-5))
            wmax = np.maximum(np.abs(w).max(axis=0), np.float32(1e-5))
            s = (a ** ALPHA / wmax ** (1 - ALPHA)).astype(np.float32)
            out[name] = (w * s[None, :]).astype(np.float32)
        else:
            s = np.ones(w.shape[1], dtype=np.float32)
        out[name + fmt.SMOOTH_SUFFIX] = s
    return out


def mixed_activation_tensors(cfg: EncoderConfig, tensors: dict[str, np.ndarray], tokenizer_json: str,
                             texts: list[str] | None = None, report: dict | None = None) -> dict[str, np.ndarray]:
    """The encoder's float32 tensors quantised to int8, with 8-bit inputs where they keep the accuracy.

    Runs the float model over the calibration text, then int8 versions, fastest first, and keeps the
    first whose hidden-state error is within ERROR_BUDGET (or no worse than 12-bit inputs
    everywhere, where even that exceeds it): every layer 8-bit; else attn.qkv, attn.out and mlp.up
    8-bit, plus each layer's mlp.down that still fits, those that cost least first; else 12-bit
    inputs everywhere. ``report``, if given, receives the errors measured and the layers chosen.
    """
    if texts is None:
        texts = [line for line in CALIBRATION_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    report = {} if report is None else report
    report["chosen"] = []
    batches = _batches(cfg, tokenizer_json, texts)
    plain = quantize_tensors(tensors)
    if not batches:
        return plain
    reference, ranges = _reference(cfg, tensors, batches)
    report["12-bit"] = base = _error(cfg, plain, batches, reference)
    budget = max(ERROR_BUDGET, base)

    def trial(layers: set[str]) -> tuple[dict[str, np.ndarray], float]:
        candidate = quantize_tensors(smoothed(tensors, ranges, layers))
        return candidate, _error(cfg, candidate, batches, reference)

    prefixes = [fmt.layer_prefix(i) for i in range(cfg.num_layers)]
    every = {p + kind for p in prefixes for kind in (*SMOOTHED, *EIGHT_BIT, "mlp.down")}
    best, report["all"] = trial(every)
    chosen = every
    if report["all"] > budget:
        chosen = {p + kind for p in prefixes for kind in (*SMOOTHED, *EIGHT_BIT)}
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
