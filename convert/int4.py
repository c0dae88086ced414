"""fp32 → int4 weights (format.py, "int4 weights"), and which layers keep int8 instead.

Quantiser: per output channel and group of 32 along K, an asymmetric grid w ≈ s·q − m, q in 0..15,
s and m float16. Start from the group's range (s = (max − min) / 15, m = −min), then REFINE_STEPS
rounds of weighted least squares: with the codes fixed, (s, m) is a straight-line fit of w on q, each
input channel k weighted by its importance h[k] = mean of x[k]² over the layer's calibration inputs
(llama.cpp's "imatrix" idea: an error where the input is large costs more); re-round the codes to the new
grid; a group keeps whichever (s, m, q) had the smaller weighted error.

Measured (tests/convert/test_int4.py prints these on each run). Relative Frobenius error of the weights,
unweighted: all-MiniLM-L6-v2's linears symmetric (llama.cpp Q4_0: d = the signed largest / −8, s = d,
m = 8d) 0.0899, asymmetric min/max 0.0806, asymmetric refined 0.0756; Gaussian weights 0.0861 / 0.0783 /
0.0735. So the format is asymmetric. all-MiniLM-L6-v2's sentence embeddings (200 shared sentences,
every block linear int4, weights dequantised, float activations): mean cosine 0.968 symmetric, 0.973
min/max, 0.976 refined, 0.985 refined with the importance weights (0.986 with AWQ-style column scaling on top:
not worth a runtime input scale).

Then GPTQ (``gptq_int4``) where the layer has calibration inputs and no group of its weights is 4-bit already:
the columns are rounded in order and each one's error is spread over the rest by the inverse Hessian of the
layer's inputs (dampened by GPTQ_DAMP of its mean diagonal: 0.1 measured best of 0.01, 0.1 and 0.3). KL
divergence of the next-token distributions from transformers fp32 over the shared sentences (bench/llm.py's
measure, its seeded random models), rounding each group → GPTQ, files the same size: the SmolLM2-135M shape
0.01251 → 0.00795 (top-1 agreement 0.436 → 0.487), the Qwen2.5-0.5B shape 0.0409 → 0.0268 (0.238 → 0.322).
all-MiniLM-L6-v2 with every layer int4: embedding cosine 0.9845 → 0.9912.

Which layers: the token table (and so a tied LM head) and the task heads stay int8, as in an int8 file.
Every other linear (the blocks' and an untied LM head) is int4 unless:

* its int4 error on the calibration text is too large: the float model runs over the converter's calibration
  text (convert/calibration.txt, as for the 8-bit activations of int8 files), each candidate's inputs X are
  recorded (up to _ROWS rows), and a layer keeps int8 weights (12-bit inputs, as an int8 file's by default) when
  ``||X W4ᵀ − X Wᵀ|| / ||X Wᵀ|| > LAYER_ERROR_LIMIT`` (Frobenius norms; W4 the dequantised int4 weight).
  LAYER_ERROR_LIMIT = 0.15 is twice the worst layer measured: all-MiniLM-L6-v2's 24 layers 0.016 to 0.080, a
  random Llama's 0.072 to 0.076; it catches a layer int4 breaks (a weight or input range float16 or 16 levels
  cannot hold), not the ordinary error. This relative error does not rank how much a layer matters (MiniLM's
  mlp.down layers measure lowest and cost the embeddings as much as the others), hence:
* with a ``budget`` (convert(..., int4_budget=...), ``--int4-budget``): the model's sensitivity to each layer is
  measured, one calibration run per layer (the float model with only that layer int4, dequantised; the same
  measure as convert/smooth.py: mean over tokens of 1 − cosine of the encoder's hidden states or the decoder's
  teacher-forced logits with the float model's), and the most sensitive layers stay int8 until the others'
  summed sensitivity is within the budget (the per-layer errors add up nearly linearly: MiniLM's sum to
  0.0145, all int4 measures 0.0153). all-MiniLM-L6-v2 with 0.005: 11 of 24 layers int8, embedding cosine
  0.9974 mean over the 1,000 shared sentences with GPTQ on the int4 layers (0.9912 with every layer int4).
  Encoders take ENCODER_BUDGET unless given one (an encoder's int4 file is chosen for size by someone who wants
  its embeddings; 1 puts every layer the limit allows in 4 bits).
* a decoder without a budget: the same sensitivities, and layers go int8 in order of sensitivity per byte their
  int8 weight adds (0.375 a weight), until the rest's summed sensitivity is DECODER_ERROR_SHARE of all-int4's or
  the next layer would take the added bytes past DECODER_EXTRA_BYTES of the int4 layers'. The sensitivity is
  concentrated: on the random SmolLM2-135M shape the early layers' attention (a third of a block's weights) carry
  most of it, and 0.8 MB (1.2 % of the int4 layers' bytes) takes out 43 % of the summed sensitivity, 3.8 MB 72 %.
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


def _grid(w: np.ndarray, s: np.ndarray, m: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of w [.., 32] on the float16 grid (s, m) [.., 1], and the h-weighted squared error per group."""
    s32, m32 = s.astype(np.float32), m.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s32 != 0, np.rint((w + m32) / s32), 0)
    q = np.clip(np.nan_to_num(q), 0, 15)
    err = np.nansum(h * (s32 * q - m32 - w) ** 2, axis=-1, keepdims=True)
    return q.astype(np.uint8), err


def _f16(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -_F16_MAX, _F16_MAX).astype(np.float16)


def _exact_grids(wg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Groups of wg [N, G, 32] (NaN: padding) whose values lie exactly on a float16 grid s·q − m, q in 0..15, in
    the float32 arithmetic of the format's definition: (found [N, G, 1], s, m, q) where found. Weights that
    were 4-bit already are carried over without loss: llama.cpp's Q4_0 (d·(q − 8): s = d, m = 8d, always
    exact; s < 0 where d is), Q4_1 and Q4_K groups whose scale and offset float16 holds, a tinybert int4
    file's own. Float
    weights have more than 16 distinct values a group and are passed over after one sort."""
    n, g, _ = wg.shape
    ordered = np.sort(wg, axis=2)                       # NaN last
    distinct = 1 + np.sum(ordered[..., 1:] != ordered[..., :-1], axis=2) - np.isnan(ordered).any(axis=2)
    found = np.zeros((n, g, 1), dtype=bool)
    s_out, m_out = np.zeros((n, g, 1), np.float16), np.zeros((n, g, 1), np.float16)
    q_out = np.zeros(wg.shape, np.uint8)
    open_ = np.argwhere(distinct <= 16)                 # candidates: [i, j] pairs
    if not len(open_):
        return found, s_out, m_out, q_out
    cand = wg[open_[:, 0], open_[:, 1]].astype(np.float32)          # [C, 32]
    real = ~np.isnan(cand)
    lo, hi = np.nanmin(cand, axis=1, keepdims=True), np.nanmax(cand, axis=1, keepdims=True)
    extreme = np.where(-lo > hi, lo, hi)                # the value of largest magnitude, signed
    # Q4_0-like grids (m = 8s; llama.cpp's d, so s, is negative when the extreme is positive) by the extreme's
    # code distance from 8, then min-based ones (m = −min) by the range's number of steps; the first exact one
    # wins.
    trials = [(extreme / k, None) for k in (-8, -7, 7, -6, 6, -5, 5, -4, 4, -3, 3, -2, 2, -1, 1)] \
        + [((hi - lo) / k, -lo) for k in range(15, 0, -1)]
    done = np.zeros(len(cand), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for scale, offset in trials:
            s16 = _f16(scale)
            m16 = _f16(8 * s16.astype(np.float32)) if offset is None else _f16(offset)
            s32, m32 = s16.astype(np.float32), m16.astype(np.float32)
            q = np.where(s32 != 0, np.rint((cand + m32) / s32), 0)
            q = np.where(real, np.nan_to_num(q, nan=0.0), 0)
            ok = ~done & np.all((q >= 0) & (q <= 15) & (~real | (s32 * q.astype(np.float32) - m32 == cand)), axis=1)
            ok &= np.isfinite(s32[:, 0]) & np.isfinite(m32[:, 0])
            if ok.any():
                i, j = open_[ok, 0], open_[ok, 1]
                found[i, j, 0] = True
                s_out[i, j], m_out[i, j], q_out[i, j] = s16[ok], m16[ok], q[ok].astype(np.uint8)
                done |= ok
            if done.all():
                break
    return found, s_out, m_out, q_out


def quantize_int4(w: np.ndarray, symmetric: bool = False, refine: int = REFINE_STEPS,
                  importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 [N, 16 G], scales float16 [N, G], offsets float16 [N, G]) of float32 w [N, K] with
    w ≈ s·q − m per group of 32 (format.py). ``importance`` (float [K], > 0): weight of each input channel in
    the error minimised (the mean square of the layer's inputs), else 1. ``symmetric`` gives llama.cpp's Q4_0
    grid instead (for comparison)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError("quantize_int4 expects a 2-D array")
    n, k = w.shape
    g = groups(k)
    padded = np.full((n, g * GROUP), np.nan, dtype=np.float32)     # NaN: not part of any group's range or fit
    padded[:, :k] = w
    wg = padded.reshape(n, g, GROUP)
    real = ~np.isnan(wg)
    h = np.ones(g * GROUP, dtype=np.float64)
    if importance is not None:
        h[:k] = np.maximum(importance, 1e-12 * max(float(np.max(importance)), 1e-30))
    h = np.where(real, h.reshape(1, g, GROUP), 0)
    if symmetric:
        idx = np.nanargmax(np.abs(wg), axis=2)[..., None]
        d = np.take_along_axis(wg, idx, axis=2) / np.float32(-8)
        s = _f16(d)
        m = _f16(8 * s.astype(np.float32))
        q, _ = _grid(wg, s, m, h)
    else:
        lo, hi = np.nanmin(wg, axis=2, keepdims=True), np.nanmax(wg, axis=2, keepdims=True)
        s, m = _f16((hi - lo) / np.float32(15)), _f16(-lo)
        q, err = _grid(wg, s, m, h)
        hsum = h.sum(2, keepdims=True)
        wf = np.where(real, wg, 0).astype(np.float64)
        for _ in range(refine):
            # weighted least squares of w on q in each group: w ≈ s q − m
            qf = q.astype(np.float64)
            mq, mw = (h * qf).sum(2, keepdims=True) / hsum, (h * wf).sum(2, keepdims=True) / hsum
            var = (h * (qf - mq) ** 2).sum(2, keepdims=True)
            cov = (h * (qf - mq) * (wf - mw)).sum(2, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                s_new = np.where(var > 0, cov / var, s.astype(np.float64))
            s_new = _f16(np.maximum(s_new, 0))
            m_new = _f16(s_new.astype(np.float64) * mq - mw)
            q_new, err_new = _grid(wg, s_new, m_new, h)
            better = err_new < err
            s, m = np.where(better, s_new, s), np.where(better, m_new, m)
            q, err = np.where(better, q_new, q), np.where(better, err_new, err)
    if not symmetric:       # groups already on a 4-bit grid keep it exactly (GGUF Q4_0 / Q4_K input)
        exact, s_exact, m_exact, q_exact = _exact_grids(wg)
        s, m, q = np.where(exact, s_exact, s), np.where(exact, m_exact, m), np.where(exact, q_exact, q)
    q = np.where(real, q, 0).astype(np.uint8).reshape(n, g * GROUP)[:, :k]
    return pack_codes(q), s[..., 0], m[..., 0]


GPTQ_DAMP = 0.1      # of the mean diagonal of XᵀX, added to it (GPTQ's dampening)
_GPTQ_BLOCK = 128     # columns per lazy update (a multiple of GROUP)


def gptq_int4(w: np.ndarray, x: np.ndarray, importance: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``quantize_int4``'s output for w [N, K] with GPTQ's error feedback (Frantar et al. 2022): the columns are
    rounded in order, and each column's rounding error is spread over the columns not yet rounded as the
    inverse Hessian of the layer's inputs x [R, K] says, so that x W4ᵀ stays close to x Wᵀ (the loss GPTQ
    minimises). A group's grid (s, m) is fitted, as quantize_int4 fits it, to the group's weights as they stand
    when its first column comes up."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    if k % GROUP or len(x) == 0:
        return quantize_int4(w, importance=importance)
    x64 = np.asarray(x, dtype=np.float64)
    hess = x64.T @ x64 / len(x64)
    dead = np.diag(hess) <= 0
    hess[dead, dead] = 1.0
    hess += GPTQ_DAMP * float(np.mean(np.diag(hess))) * np.eye(k)
    try:
        # The upper Cholesky factor of H⁻¹: row j holds the weights that spread column j's error onward.
        hinv = np.linalg.cholesky(np.linalg.inv(hess)).T
    except np.linalg.LinAlgError:
        return quantize_int4(w, importance=importance)
    work = w.astype(np.float64)
    work[:, dead] = 0.0
    codes = np.zeros((n, k), dtype=np.uint8)
    s_all = np.zeros((n, k // GROUP), dtype=np.float16)
    m_all = np.zeros((n, k // GROUP), dtype=np.float16)
    for b0 in range(0, k, _GPTQ_BLOCK):
        b1 = min(k, b0 + _GPTQ_BLOCK)
        errors = np.zeros((n, b1 - b0))
        for j in range(b0, b1):
            g = j // GROUP
            if j % GROUP == 0:
                _, s_all[:, g:g + 1], m_all[:, g:g + 1] = quantize_int4(
                    work[:, j:j + GROUP].astype(np.float32),
                    importance=None if importance is None else importance[j:j + GROUP])
            s32, m32 = s_all[:, g].astype(np.float64), m_all[:, g].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                q = np.clip(np.nan_to_num(np.where(s32 != 0, np.rint((work[:, j] + m32) / s32), 0)), 0, 15)
            codes[:, j] = q
            err = (work[:, j] - (s32 * q - m32)) / hinv[j, j]
            work[:, j + 1:b1] -= np.outer(err, hinv[j, j + 1:b1])
            errors[:, j - b0] = err
        work[:, b1:] -= errors @ hinv[b0:b1, b1:]
    return pack_codes(codes), s_all, m_all


def relative_error(w: np.ndarray, packed: tuple[np.ndarray, np.ndarray, np.ndarray],
                   x: np.ndarray | None = None) -> float:
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


class _Calibration:
    """The float model over the calibration text: each int4 candidate layer's recorded inputs, the reference
    output (an encoder's hidden states, a decoder's teacher-forced logits), and ``error(tensors)``: the same
    measure as convert/smooth.py's (mean over tokens of 1 − cosine with the reference) for float32 tensors."""

    def __init__(self, cfg, tensors: dict[str, np.ndarray], tokenizer_json: str, texts: list[str],
                 id_map: Sequence[int] | None) -> None:
        from . import smooth

        if isinstance(cfg, EncoderConfig):
            from tinybert.models.encoder import EncoderModel

            batches = smooth._batches(cfg, tokenizer_json, texts)
            tokens = sum(b.ids.size for b in batches)
            self._build, linears = (lambda t: EncoderModel(cfg, t)), _encoder_linears
            self._run = lambda model: smooth._run(model, batches)
        else:
            seqs = smooth._generation_texts(cfg, tokenizer_json, texts, id_map)
            tokens = sum(s.size for s in seqs)
            self._build, linears = (lambda t: smooth._generation_model(cfg, t)), smooth._generation_linears
            self._run = lambda model: smooth._generation_logits(model, seqs)
        self.empty = tokens == 0
        model = self._build(tensors)
        stride = max(1, tokens // _ROWS)
        recorders = {}
        for name, (owner, attr) in linears(model).items():
            if name + ".weight" in tensors:          # a tied LM head has no weight of its own: it stays int8
                recorders[name] = _Recorder(getattr(owner, attr), stride)
                setattr(owner, attr, recorders[name])
        self.reference = None if self.empty else self._run(model)
        self.inputs = {name: np.concatenate(r.rows) if r.rows else np.zeros((0, r.in_features), np.float32)
                       for name, r in recorders.items()}

    def error(self, tensors: dict[str, np.ndarray]) -> float:
        from .smooth import _logit_error

        return _logit_error(self._run(self._build(tensors)), self.reference)


def _importance(x: np.ndarray) -> np.ndarray | None:
    """Mean square of each input channel over the recorded rows (None without rows)."""
    return (x.astype(np.float64) ** 2).mean(axis=0) if len(x) else None


ENCODER_BUDGET = 0.005   # issue 28: MiniLM's embeddings at a mean cosine >= 0.995 with transformers fp32
DECODER_ERROR_SHARE = 0.25   # decoders without a budget: int8 layers until the rest's error is this share of all-int4's
DECODER_EXTRA_BYTES = 0.10   # ... spending at most this share of the int4 layers' bytes on them


def _int4_bytes(shape: tuple[int, int]) -> int:
    """Bytes of an int4 weight: codes, float16 scale and offset per group of 32."""
    return shape[0] * shape[1] // 2 + 4 * shape[0] * (shape[1] // GROUP)


def _int8_extra_bytes(shape: tuple[int, int]) -> int:
    """What keeping a weight int8 (codes + float32 scale per row) costs over int4."""
    return shape[0] * shape[1] + 4 * shape[0] - _int4_bytes(shape)


def int4_tensors(cfg: EncoderConfig | DecoderConfig, tensors: dict[str, np.ndarray], tokenizer_json: str,
                 texts: list[str] | None = None, report: dict | None = None,
                 progress: Callable[[str], None] | None = None,
                 id_map: Sequence[int] | None = None, budget: float | None = None) -> dict[str, np.ndarray]:
    """The float32 tensors of an int4 file: the blocks' linears (and an untied LM head) as int4 codes +
    ``.gscale`` + ``.gmin``, int8 + ``.scale`` for the other quantised tensors and for the layers kept int8
    (module docstring): those above LAYER_ERROR_LIMIT and, with a ``budget``, the most sensitive ones until the
    rest's summed sensitivity fits it. ``report`` receives each candidate's error (and sensitivity) and the
    layers kept int8; ``progress`` the name of each model run as it starts."""
    from .smooth import CALIBRATION_TEXT

    if not isinstance(cfg, (EncoderConfig, DecoderConfig)):
        raise ConversionError("int4 weights are supported for encoders and decoders, not encoder-decoders yet")
    if texts is None:
        texts = [line for line in CALIBRATION_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    report = {} if report is None else report
    tell = progress or (lambda label: None)
    tell("float reference")
    calibration = _Calibration(cfg, tensors, tokenizer_json, texts, id_map)
    out = quantize_tensors(tensors)
    report["errors"], report["int8"] = {}, []
    # ``rounded``: each group rounded to its grid; ``packed``: what the file gets (GPTQ's where it applies). The
    # layers kept int8 are chosen by the rounded weights' errors: GPTQ fits the calibration text itself, so its
    # errors there understate those on other text (MiniLM's budget then kept 4 layers int8 where it needs 11).
    packed: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    rounded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for layer, x in sorted(calibration.inputs.items()):
        w = tensors[layer + ".weight"]
        if w.shape[1] % GROUP or not _fits_float16(w):      # the format's rule; float16's range
            report["int8"].append(layer)
            continue
        packed[layer] = rounded[layer] = quantize_int4(w, importance=_importance(x))
        if len(x) and not w.shape[1] % GROUP \
                and not _exact_grids(w.reshape(w.shape[0], -1, GROUP).astype(np.float32))[0].any():
            # Weights with groups on 4-bit grids already (a GGUF Q4_0 / Q4_K file) keep those groups exactly;
            # GPTQ's error feedback would move them.
            packed[layer] = gptq_int4(w, x, importance=_importance(x))
        report["errors"][layer] = error = relative_error(w, rounded[layer], x if len(x) else None)
        if error > LAYER_ERROR_LIMIT:
            report["int8"].append(layer)
            del packed[layer]
    if budget is None and isinstance(cfg, EncoderConfig):
        budget = ENCODER_BUDGET
    by_share = budget is None          # a decoder without a budget: DECODER_ERROR_SHARE within DECODER_EXTRA_BYTES
    if (by_share or budget < 1) and packed and not calibration.empty:
        # one run per candidate: the float model with only that layer's weight int4 (dequantised)
        report["sensitivity"] = sensitivity = {}
        for layer in sorted(packed):
            tell(f"sensitivity of {layer}")
            w = tensors[layer + ".weight"]
            sensitivity[layer] = calibration.error({**tensors, layer + ".weight": dequantize(*rounded[layer],
                                                                                              w.shape[1])})
        total = sum(sensitivity.values())
        if by_share:
            extra = {layer: _int8_extra_bytes(tensors[layer + ".weight"].shape) for layer in packed}
            target, allowance = DECODER_ERROR_SHARE * total, DECODER_EXTRA_BYTES * sum(
                _int4_bytes(tensors[layer + ".weight"].shape) for layer in packed)
            order = sorted(sensitivity, key=lambda name: sensitivity[name] / extra[name], reverse=True)
        else:                              # an error budget alone: the most sensitive first, bytes not counted
            extra, target, allowance = dict.fromkeys(packed, 0), budget, 0
            order = sorted(sensitivity, key=sensitivity.__getitem__, reverse=True)
        spent = 0
        for layer in order:
            if total <= target or spent + extra[layer] > allowance:
                break
            total -= sensitivity[layer]
            spent += extra[layer]
            report["int8"].append(layer)
            del packed[layer]
        report["estimated error"] = total
    for layer, codes in packed.items():
        name = layer + ".weight"
        del out[name + fmt.SCALE_SUFFIX]
        out[name], out[name + fmt.GROUP_SCALE_SUFFIX], out[name + fmt.GROUP_MIN_SUFFIX] = codes
    report["int8"].sort()
    return out
