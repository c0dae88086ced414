"""fp32 → int4 weights (format.py, "int4 weights"), and which layers keep int8 instead.

Quantiser: per output channel and group of 32 along K, an asymmetric grid w ≈ s·q − m, q in 0..15,
s and m float16. Start from the group's range (s = (max − min) / 15, m = −min), then REFINE_STEPS
rounds of least squares: with the codes fixed, (s, m) is a straight-line fit of w on q; re-round the
codes to the new grid; a group keeps whichever (s, m, q) had the smaller error. All-MiniLM-L6-v2's
linears (relative Frobenius error of the weights, all 36 layers' weights together): symmetric
(llama.cpp Q4_0: d = the signed largest / −8, s = d, m = 8d) 0.1202, asymmetric min/max 0.0914,
asymmetric refined 0.0829. A random decoder's Gaussian weights: 0.1206 / 0.0960 / 0.0874 (see
tests/convert/test_int4.py, which measures these on each run). So the format is asymmetric.

Which layers: the token table (and so a tied LM head) and the task heads stay int8, as in an int8 file.
Every other linear (the blocks' and an untied LM head) is int4 unless its int4 error on the calibration
text is too large: the float model runs over the converter's calibration text (convert/calibration.txt,
as for the 8-bit activations of int8 files), each such layer's inputs X are recorded (up to
_ROWS rows), and a layer keeps int8 weights (with 12-bit inputs, as an int8 file's by default) when

    ||X W4ᵀ − X Wᵀ|| / ||X Wᵀ||  >  LAYER_ERROR_LIMIT     (Frobenius norms; W4 the dequantised int4 weight)

LAYER_ERROR_LIMIT = 0.15: all-MiniLM-L6-v2's 36 layers measure 0.07 to 0.13 (none kept int8), a random
Llama's 0.08 to 0.09; a layer whose inputs have a few dominating channels, or whose groups mix
very different magnitudes, measures far above (the test builds one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tinybert import format as fmt
from tinybert.config import DecoderConfig, EncoderConfig
from tinybert.errors import ConversionError
from tinybert.kernels.gemm_int4 import GROUP, dequantize, groups, pack_codes

from .quantize import quantize_tensors

REFINE_STEPS = 2
LAYER_ERROR_LIMIT = 0.15
_ROWS = 1024          # calibration input rows kept per layer (every few tokens)
_F16_MAX = 65504.0


def _grid(w: np.ndarray, s: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of w [.., 32] on the float16 grid (s, m) [.., 1], and the squared error per group."""
    s32, m32 = s.astype(np.float32), m.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s32 != 0, np.rint((w + m32) / s32), 0)
    q = np.clip(np.nan_to_num(q), 0, 15)
    err = np.nansum((s32 * q - m32 - w) ** 2, axis=-1, keepdims=True)
    return q.astype(np.uint8), err


def _f16(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -_F16_MAX, _F16_MAX).astype(np.float16)


def quantize_int4(w: np.ndarray, symmetric: bool = False,
                  refine: int = REFINE_STEPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 [N, 16 G], scales float16 [N, G], offsets float16 [N, G]) of float32 w [N, K] with
    w ≈ s·q − m per group of 32 (format.py). ``symmetric`` gives llama.cpp's Q4_0 grid instead (for comparison)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError("quantize_int4 expects a 2-D array")
    n, k = w.shape
    g = groups(k)
    padded = np.full((n, g * GROUP), np.nan, dtype=np.float32)     # NaN: not part of any group's range or fit
    padded[:, :k] = w
    wg = padded.reshape(n, g, GROUP)
    real = ~np.isnan(wg)
    if symmetric:
        idx = np.nanargmax(np.abs(wg), axis=2)[..., None]
        d = np.take_along_axis(wg, idx, axis=2) / np.float32(-8)
        s = _f16(d)
        m = _f16(8 * s.astype(np.float32))
        q, _ = _grid(wg, s, m)
    else:
        lo, hi = np.nanmin(wg, axis=2, keepdims=True), np.nanmax(wg, axis=2, keepdims=True)
        s, m = _f16((hi - lo) / np.float32(15)), _f16(-lo)
        q, err = _grid(wg, s, m)
        count = real.sum(axis=2, keepdims=True).astype(np.float64)
        for _ in range(refine):
            qf = np.where(real, q, 0).astype(np.float64)
            wf = np.where(real, wg, 0).astype(np.float64)
            mq, mw = qf.sum(2, keepdims=True) / count, wf.sum(2, keepdims=True) / count
            var = (np.where(real, qf - mq, 0) ** 2).sum(2, keepdims=True)
            cov = (np.where(real, qf - mq, 0) * (wf - mw)).sum(2, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                s_new = np.where(var > 0, cov / var, s.astype(np.float64))
            s_new = _f16(np.maximum(s_new, 0))
            m_new = _f16(s_new.astype(np.float64) * mq - mw)
            q_new, err_new = _grid(wg, s_new, m_new)
            better = err_new < err
            s, m = np.where(better, s_new, s), np.where(better, m_new, m)
            q, err = np.where(better, q_new, q), np.where(better, err_new, err)
    q = np.where(real, q, 0).astype(np.uint8).reshape(n, g * GROUP)[:, :k]
    return pack_codes(q), s[..., 0], m[..., 0]


def relative_error(w: np.ndarray, packed: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray | None = None) -> float:
    """||x W4ᵀ − x Wᵀ|| / ||x Wᵀ|| (Frobenius), or the weights' own relative error without x."""
    w4 = dequantize(*packed, w.shape[1])
    if x is None:
        return float(np.linalg.norm(w4 - w) / max(np.linalg.norm(w), 1e-30))
    x64 = x.astype(np.float64)
    ref = x64 @ w.T.astype(np.float64)
    return float(np.linalg.norm(x64 @ (w4 - w).T.astype(np.float64)) / max(np.linalg.norm(ref), 1e-30))


def _fits_float16(w: np.ndarray) -> bool:
    return bool(np.abs(w).max(initial=0) < _F16_MAX / 2)


class _Recorder:
    """Stands in for a layer during the float calibration run (as smooth._Observed): keeps every few of its
    input rows, up to _ROWS, then calls the layer."""

    def __init__(self, layer, stride: int) -> None:
        self.layer, self.stride, self.rows = layer, stride, []
        self.kept = 0

    def __call__(self, x: np.ndarray, *args, **kwargs) -> np.ndarray:
        if self.kept < _ROWS and len(x):
            take = np.asarray(x[::self.stride], dtype=np.float32)[:_ROWS - self.kept]
            self.rows.append(take.copy())
            self.kept += len(take)
        return self.layer(x, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.layer, name)


def _encoder_linears(model) -> dict[str, tuple[object, str]]:
    found = {}
    for i, block in enumerate(model.blocks):
        for owner, attrs, kind in ((block.attn, ("qkv", "out"), "attn."), (block.mlp, ("up", "down"), "mlp.")):
            for attr in attrs:
                found[fmt.layer_prefix(i) + kind + attr] = (owner, attr)
    return found


def _calibration_inputs(cfg, tensors: dict[str, np.ndarray], tokenizer_json: str, texts: list[str],
                        id_map: Sequence[int] | None) -> dict[str, np.ndarray]:
    """Each int4 candidate layer's recorded inputs over the calibration text (float model)."""
    from . import smooth

    if isinstance(cfg, EncoderConfig):
        from tinybert.models.encoder import EncoderModel

        model = EncoderModel(cfg, tensors)
        batches = smooth._batches(cfg, tokenizer_json, texts)
        tokens = sum(b.ids.size for b in batches)
        linears = _encoder_linears(model)
        run = (lambda: smooth._run(model, batches)) if batches else (lambda: None)
    else:
        model = smooth._generation_model(cfg, tensors)
        seqs = smooth._generation_texts(cfg, tokenizer_json, texts, id_map)
        tokens = sum(s.size for s in seqs)
        linears = smooth._generation_linears(model)
        run = (lambda: smooth._generation_logits(model, seqs)) if seqs else (lambda: None)
    stride = max(1, tokens // _ROWS)
    recorders = {}
    for name, (owner, attr) in linears.items():
        if name + ".weight" in tensors:          # a tied LM head has no weight of its own: it stays int8
            recorders[name] = _Recorder(getattr(owner, attr), stride)
            setattr(owner, attr, recorders[name])
    run()
    return {name: np.concatenate(r.rows) if r.rows else np.zeros((0, r.in_features), np.float32)
            for name, r in recorders.items()}


def int4_tensors(cfg: EncoderConfig | DecoderConfig, tensors: dict[str, np.ndarray], tokenizer_json: str,
                 texts: list[str] | None = None, report: dict | None = None,
                 progress: Callable[[str], None] | None = None,
                 id_map: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The float32 tensors of an int4 file: the blocks' linears (and an untied LM head) as int4 codes +
    ``.gscale`` + ``.gmin`` where their calibration error is within LAYER_ERROR_LIMIT, int8 + ``.scale``
    for the other quantised tensors. ``report`` receives each candidate's error and the layers kept int8."""
    from .smooth import CALIBRATION_TEXT

    if not isinstance(cfg, (EncoderConfig, DecoderConfig)):
        raise ConversionError("int4 weights are supported for encoders and decoders, not encoder-decoders yet")
    if texts is None:
        texts = [line for line in CALIBRATION_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    report = {} if report is None else report
    (progress or (lambda label: None))("float reference")
    inputs = _calibration_inputs(cfg, tensors, tokenizer_json, texts, id_map)
    out = quantize_tensors(tensors)
    report["errors"], report["int8"] = {}, []
    for layer, x in sorted(inputs.items()):
        name = layer + ".weight"
        w = tensors[name]
        if w.shape[1] % GROUP or not _fits_float16(w):      # the format's rule; float16's range
            report["int8"].append(layer)
            continue
        packed = quantize_int4(w)
        error = relative_error(w, packed, x if len(x) else None)
        report["errors"][layer] = error
        if error > LAYER_ERROR_LIMIT:
            report["int8"].append(layer)
            continue
        del out[name + fmt.SCALE_SUFFIX]
        out[name], out[name + fmt.GROUP_SCALE_SUFFIX], out[name + fmt.GROUP_MIN_SUFFIX] = packed
    return out
