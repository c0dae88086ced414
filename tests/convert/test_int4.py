"""int4 files (convert --dtype int4): the quantiser, the file, decoders vs transformers fp32, MiniLM's real weights."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import hf_greedy

import tinybert
from tinybert import format as fmt
from tinybert.errors import ModelFileError
from tinybert.kernels import gemm_int4
from tinybert.loader import load

PROMPT_TEXTS = ["The quick brown fox", "In the beginning", "Once upon a time there was", "The weather today"]


@pytest.fixture(scope="module")
def int4_decoder(decoder_model, tmp_path_factory):
    """name → (transformers model, {"fp32", "int8", "int4": path})."""
    from tinybert_convert import convert

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model, files = decoder_model(name)
            out = tmp_path_factory.mktemp(f"int4-{name}") / "model-int4.safetensors"
            cache[name] = (model, {**files, "int4": convert(files["fp32"].parent / "hf", out, dtype="int4")})
        return cache[name]

    return get


def _minilm_linears(minilm_dir) -> list[np.ndarray]:
    from safetensors.numpy import load_file

    raw = load_file(str(next(minilm_dir.glob("*.safetensors"))))
    return [v.astype(np.float32) for k, v in sorted(raw.items()) if v.ndim == 2 and "embeddings" not in k]


def _error(ws: list[np.ndarray], **kwargs) -> float:
    from tinybert_convert.int4 import quantize_int4

    num = den = 0.0
    for w in ws:
        w4 = gemm_int4.dequantize(*quantize_int4(w, **kwargs), w.shape[1])
        num += float(((w4 - w).astype(np.float64) ** 2).sum())
        den += float((w.astype(np.float64) ** 2).sum())
    return (num / den) ** 0.5


def test_asymmetric_beats_symmetric(minilm_dir):
    """Relative Frobenius error of all-MiniLM-L6-v2's linear weights, and of Gaussian ones: the format's
    asymmetric grid (refined) against llama.cpp's Q4_0 (symmetric) and the plain min / max grid."""
    rng = np.random.default_rng(0)
    for label, ws in (("MiniLM", _minilm_linears(minilm_dir)),
                      ("Gaussian", [rng.standard_normal((256, 896)).astype(np.float32) * 0.02])):
        sym, minmax, refined = _error(ws, symmetric=True), _error(ws, refine=0), _error(ws)
        print(f"\n{label} int4 weight error: symmetric {sym:.4f}, asymmetric min/max {minmax:.4f}, "
              f"refined {refined:.4f}")
        assert refined < minmax < sym
        assert refined < 0.9 * sym


def test_gptq_lowers_the_output_error_on_unseen_inputs():
    """GPTQ's error feedback against rounding each weight to its group's grid: the layer's output error
    ||x W4ᵀ − x Wᵀ|| / ||x Wᵀ|| on rows it was not fitted on, inputs with correlated channels of unequal size (as a
    layer's inputs are). The grids and codes stay in the format (dequantize reads them)."""
    from tinybert_convert.int4 import gptq_int4, quantize_int4, relative_error

    rng = np.random.default_rng(3)
    k, n = 256, 192
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    size = np.exp(rng.standard_normal(k))

    def inputs(rows):
        return ((rng.standard_normal((rows, k)) @ mix) * size).astype(np.float32)

    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    fit, unseen = inputs(1024), inputs(1024)
    importance = (fit.astype(np.float64) ** 2).mean(axis=0)
    plain = relative_error(w, quantize_int4(w, importance=importance), unseen)
    packed = gptq_int4(w, fit, importance=importance)
    gptq = relative_error(w, packed, unseen)
    codes, scales, offsets = packed
    assert codes.shape == (n, k // 2) and scales.shape == offsets.shape == (n, k // gemm_int4.GROUP)
    assert scales.dtype == offsets.dtype == np.float16 and np.isfinite(gemm_int4.dequantize(*packed, k)).all()
    print(f"\nint4 output error on unseen inputs: rounding {plain:.4f}, GPTQ {gptq:.4f}")
    assert gptq < 0.93 * plain


def test_4_bit_grids_are_kept_exactly():
    """Weights already on a 4-bit grid come through the quantiser unchanged: llama.cpp's Q4_0 and Q4_1 (gguf-py's own
    quantisers and dequantisers, the reference), with d of either sign; float weights do not trigger it."""
    import gguf
    from tinybert_convert.int4 import _exact_grids, quantize_int4

    rng = np.random.default_rng(7)
    w = (rng.standard_normal((48, 320)) * rng.uniform(0.01, 3, (48, 1))).astype(np.float32)
    for qtype in (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1):
        held = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)
        codes, s, m = quantize_int4(held)
        np.testing.assert_array_equal(gemm_int4.dequantize(codes, s, m, w.shape[1]), held, err_msg=qtype.name)
        if qtype == gguf.GGMLQuantizationType.Q4_0:
            assert (s < 0).any() and (s > 0).any()       # d takes both signs
    assert not _exact_grids(w.reshape(48, 10, 32))[0].any()


def test_quantiser_edge_cases():
    from tinybert_convert.int4 import quantize_int4

    w = np.zeros((3, 64), dtype=np.float32)
    w[1] = 0.25                                   # a constant group
    w[2, :32] = np.linspace(-1, 1, 32)            # exactly on a 16-level grid? no: 32 values, 16 codes
    codes, s, m = quantize_int4(w)
    assert codes.shape == (3, 32) and s.dtype == m.dtype == np.float16 and s.shape == (3, 2)
    w4 = gemm_int4.dequantize(codes, s, m, 64)
    np.testing.assert_array_equal(w4[0], 0)
    np.testing.assert_allclose(w4[1], 0.25, rtol=1e-3)
    assert np.abs(w4[2] - w[2]).max() <= (2 / 15) / 2 * 1.01
    # Q4_0 (s = d, m = 8 d, codes in its nibble order) is the format exactly
    d = np.float16(0.01)
    q = np.random.default_rng(1).integers(0, 16, (2, 32)).astype(np.uint8)
    s0 = np.full((2, 1), d)
    w0 = gemm_int4.dequantize(gemm_int4.pack_codes(q), s0, (8 * s0.astype(np.float32)).astype(np.float16), 32)
    np.testing.assert_array_equal(w0, (q.astype(np.float32) - 8) * np.float32(d))


def _logit_agreement(model, gen, prompts):
    import torch

    ref = hf_greedy(model, prompts, 32)
    cos, top = [], []
    for p, r in zip(prompts, ref):
        with torch.no_grad():
            full = model(torch.tensor([p + r])).logits[0].numpy()
        ours = gen.logits(np.array([p + r]))[0]
        cos += [float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(full, ours)]
        top += list(full.argmax(1) == ours.argmax(1))
    got = gen.generate_ids(prompts, max_new_tokens=32)
    same = [next((i for i, (a, b) in enumerate(zip(r, g["token_ids"])) if a != b), 32) for r, g in zip(ref, got)]
    return np.array(cos), float(np.mean(top)), same


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama-mqa-tied"])
def test_int4_decoder_vs_transformers(name, int4_decoder):
    """Logits (teacher-forced on transformers' greedy continuation) and greedy generation of an int4 file
    against transformers fp32, with the int8 file's for scale. Random models have flat logits (near-ties
    everywhere; scaling the LM head scales them alike), so greedy runs part ways early at 4 bits: the gate is
    the teacher-forced argmax agreement, greedy is reported. llama and qwen2 have untied LM heads (int4 too)."""
    model, files = int4_decoder(name)
    gen = tinybert.Generator(files["int4"])
    prompts = [gen.tokenizer.encode(t).ids for t in PROMPT_TEXTS]
    cos, top, same = _logit_agreement(model, gen, prompts)
    cos8, top8, same8 = _logit_agreement(model, tinybert.Generator(files["int8"]), prompts)
    sizes = {dtype: path.stat().st_size for dtype, path in files.items()}
    print(f"\n{name} int4: logits cosine min {cos.min():.5f} mean {cos.mean():.5f}, "
          f"argmax agreement {top:.3f}, greedy identical for the first {same} of 32 | int8: min {cos8.min():.5f} "
          f"mean {cos8.mean():.5f}, argmax {top8:.3f}, {same8} | bytes {sizes}")
    assert cos.mean() >= 0.99 and cos.min() >= 0.98
    assert top >= 0.75
    assert sizes["int4"] < 0.85 * sizes["int8"]
    # most block linears are int4 (a decoder keeps int8 only its most sensitive ones, within
    # DECODER_EXTRA_BYTES); the token table int8
    m = load(files["int4"])
    kinds = [m.tensors[fmt.layer_prefix(i) + layer + ".weight"].dtype for i in range(2)
             for layer in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")]
    assert kinds.count(np.dtype(np.uint8)) >= 4 and set(kinds) <= {np.dtype(np.uint8), np.dtype(np.int8)}
    assert m.tensors[fmt.EMBED_TOKENS].dtype == np.int8
    assert m.quantization == "int4"


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("budget", [None, 1.0])
def test_minilm_int4_embeddings(budget, minilm_dir, tmp_path, sentences, reference_embeddings):
    """all-MiniLM-L6-v2 (real weights) converted int4: sentence embeddings against transformers fp32 over the
    1,000 shared sentences. Issue 28's target is a mean cosine >= 0.995: every block linear int4 (``int4_budget``
    1) falls short of it (a 6-layer, 384-wide model); an encoder's default budget, 0.005, reaches it by keeping
    the most sensitive layers int8."""
    from tinybert_convert import convert

    path = convert(minilm_dir, tmp_path / "minilm-int4.safetensors", dtype="int4", int4_budget=budget)
    m = load(path)
    int4 = [n for n in m.tensors if n + fmt.GROUP_SCALE_SUFFIX in m.tensors]
    cos = _cosines(tinybert.Encoder(path).encode(sentences), reference_embeddings)
    print(f"\nMiniLM int4, budget {budget}: {len(int4)} of 24 layers int4, {path.stat().st_size / 1e6:.1f} MB; cosine "
          f"mean {cos.mean():.5f} p01 {np.percentile(cos, 1):.5f} min {cos.min():.5f}")
    if budget == 1.0:
        assert len(int4) == 24
        assert cos.mean() >= 0.98 and np.percentile(cos, 1) >= 0.97
    else:
        assert 8 <= len(int4) < 24
        assert cos.mean() >= 0.995 and np.percentile(cos, 1) >= 0.99


def _rewrite(src, dst, change):
    from safetensors import safe_open
    from tinybert_convert.writer import write_safetensors

    with safe_open(str(src), "numpy") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    change(tensors)
    write_safetensors(dst, tensors, metadata)
    return dst


def test_loader_validates_int4_tensors(int4_decoder, tmp_path):
    _, files = int4_decoder("llama")
    name = fmt.layer_prefix(1) + "mlp.down.weight"

    def nan_scale(t):
        t[name + fmt.GROUP_SCALE_SUFFIX][0, 0] = np.float16(np.nan)

    def short_codes(t):
        t[name] = t[name][:, :-16]

    def scale_as_float32(t):
        t[name + fmt.GROUP_MIN_SUFFIX] = t[name + fmt.GROUP_MIN_SUFFIX].astype(np.float32)

    def int8_scale_left(t):
        t[name + fmt.SCALE_SUFFIX] = np.ones(t[name].shape[0], np.float32)

    def no_offsets(t):
        del t[name + fmt.GROUP_MIN_SUFFIX]

    for change, message in ((nan_scale, "NaN or infinite"), (short_codes, "expected uint8"),
                            (scale_as_float32, "expected float16"), (int8_scale_left, "unexpected tensors"),
                            (no_offsets, "missing")):
        path = _rewrite(files["int4"], tmp_path / f"{change.__name__}.safetensors", change)
        with pytest.raises(ModelFileError, match=message):
            load(path)
    # int8 and int4 layers mix in one int4 file (the converter keeps some layers int8)
    from tinybert_convert.quantize import quantize_per_row

    def to_int8(t):
        w = gemm_int4.dequantize(t.pop(name), t.pop(name + fmt.GROUP_SCALE_SUFFIX), t.pop(name + fmt.GROUP_MIN_SUFFIX),
                                 128)
        t[name], t[name + fmt.SCALE_SUFFIX] = quantize_per_row(w)

    mixed = load(_rewrite(files["int4"], tmp_path / "mixed.safetensors", to_int8))
    assert mixed.tensors[name].dtype == np.int8
    tinybert.Generator(mixed.path).generate_ids([[5, 6, 7]], max_new_tokens=3)


def test_layers_above_the_error_limit_stay_int8(decoder_model, monkeypatch):
    """Every layer whose measured int4 error exceeds LAYER_ERROR_LIMIT is int8 in the output, the others int4
    (the random model's layers all fit 0.15: the limit is lowered to their median here)."""
    import json

    from tinybert_convert import int4 as int4_module
    from tinybert_convert.decoders import decoder_config, decoder_tensors
    from tinybert_convert.readers import read_checkpoint

    _, files = decoder_model("llama")
    src = files["fp32"].parent / "hf"
    cfg = decoder_config(json.loads((src / "config.json").read_text()), src)
    tensors = decoder_tensors(cfg, read_checkpoint(src))
    tokenizer = (src / "tokenizer.json").read_text()
    first: dict = {}
    int4_module.int4_tensors(cfg, tensors, tokenizer, report=first, budget=1.0)   # no layer kept int8 for its
    # sensitivity: the limit alone
    errors = first["errors"]
    print(f"\nrandom llama int4 layer errors: {({k: round(v, 4) for k, v in errors.items()})}")
    assert first["int8"] == [] and max(errors.values()) < int4_module.LAYER_ERROR_LIMIT
    assert set(errors) == {fmt.layer_prefix(i) + k for i in range(2)
                           for k in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")} | {fmt.LM_HEAD}
    limit = float(np.median(list(errors.values())))
    monkeypatch.setattr(int4_module, "LAYER_ERROR_LIMIT", limit)
    report: dict = {}
    out = int4_module.int4_tensors(cfg, tensors, tokenizer, report=report, budget=1.0)
    above = sorted(k for k, v in errors.items() if v > limit)
    assert report["int8"] == above and 0 < len(above) < len(errors)
    for layer in errors:
        assert out[layer + ".weight"].dtype == (np.int8 if layer in above else np.uint8)
        assert (layer + ".weight" + fmt.SCALE_SUFFIX in out) == (layer in above)


def test_decoder_keeps_its_most_sensitive_layers_int8_per_byte(decoder_model):
    """A decoder converted without a budget: its layers go int8 in order of measured sensitivity per added byte,
    until the rest's summed sensitivity is DECODER_ERROR_SHARE of all-int4's or the added bytes would pass
    DECODER_EXTRA_BYTES of the int4 layers'; the output holds exactly those layers int8."""
    import json

    from tinybert_convert import int4 as int4_module
    from tinybert_convert.decoders import decoder_config, decoder_tensors
    from tinybert_convert.readers import read_checkpoint

    _, files = decoder_model("llama")
    src = files["fp32"].parent / "hf"
    cfg = decoder_config(json.loads((src / "config.json").read_text()), src)
    tensors = decoder_tensors(cfg, read_checkpoint(src))
    report: dict = {}
    out = int4_module.int4_tensors(cfg, tensors, (src / "tokenizer.json").read_text(), report=report)
    sens = report["sensitivity"]
    shape = {layer: tensors[layer + ".weight"].shape for layer in sens}
    extra = {layer: int4_module._int8_extra_bytes(shape[layer]) for layer in sens}
    assert extra[fmt.layer_prefix(0) + "mlp.up"] == shape[fmt.layer_prefix(0) + "mlp.up"][0] * (
        shape[fmt.layer_prefix(0) + "mlp.up"][1] * 3 // 8 + 4)
    order = sorted(sens, key=lambda name: sens[name] / extra[name], reverse=True)
    kept = report["int8"]
    assert kept and kept == order[:len(kept)]                 # the densest first, none skipped
    allowance = int4_module.DECODER_EXTRA_BYTES * sum(int4_module._int4_bytes(shape[n]) for n in sens)
    rest = sum(sens.values()) - sum(sens[n] for n in kept)
    assert sum(extra[n] for n in kept) <= allowance
    assert report["estimated error"] == pytest.approx(rest)
    stopped_by_share = rest <= int4_module.DECODER_ERROR_SHARE * sum(sens.values())
    assert stopped_by_share or sum(extra[n] for n in order[:len(kept) + 1]) > allowance
    for layer in sens:
        assert out[layer + ".weight"].dtype == (np.int8 if layer in kept else np.uint8)


def test_format_and_kernel_agree_on_the_group():
    assert fmt.INT4_GROUP == gemm_int4.GROUP
    assert fmt.int4_shapes((7, 96)) == ((7, 48), (7, 3)) and fmt.int4_shapes((7, 100)) is None


def test_convert_rejects_bad_int4_requests(tmp_path, decoder_model):
    from tinybert_convert import convert

    from tinybert.errors import ConversionError

    _, files = decoder_model("llama")
    with pytest.raises(ConversionError, match="int4_budget"):
        convert(files["fp32"].parent / "hf", tmp_path / "x.safetensors", dtype="int8", int4_budget=0.01)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ConversionError, match="int4_budget"):
            convert(files["fp32"].parent / "hf", tmp_path / "x.safetensors", dtype="int4", int4_budget=bad)


def test_cli_converts_int4_with_a_budget(decoder_model, tmp_path, capsys):
    """``tinybert convert --dtype int4 --int4-budget``: a budget below the all-int4 error keeps some layers int8."""
    from tinybert.cli import main

    _, files = decoder_model("llama")
    out = tmp_path / "cli-int4.safetensors"
    assert main(["convert", str(files["fp32"].parent / "hf"), str(out), "--dtype", "int4", "--int4-budget", "0.002",
                 "--quiet"]) == 0
    m = load(out)
    linears = [fmt.layer_prefix(i) + kind + ".weight" for i in range(2)
               for kind in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")] + ["lm_head.weight"]
    kinds = {m.tensors[n].dtype for n in linears}
    assert m.quantization == "int4" and kinds == {np.dtype(np.int8), np.dtype(np.uint8)}
    assert "int4" in capsys.readouterr().err
