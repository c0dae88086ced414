"""Hostile files and inputs: every failure is a TinyBertError (never a crash, a hang, another exception type, a
silent non-finite answer or a partial file). Bounded slices of the fuzzers and stress runs of fuzz/ (their
long versions are documented commands; see docs/security.md).

The seed files are tiny valid models (fuzz/seeds.py); references for "the same result" are sequential calls.
"""

from __future__ import annotations

import base64
import json
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.seeds import write_seeds
from tinybert import Classifier, Encoder, Generator, Translator
from tinybert import format as fmt
from tinybert.errors import InputError, ModelFileError, NumericalError, TinyBertError
from tinybert.loader import load

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    return write_seeds(tmp_path_factory.mktemp("seeds"))


def _run_file(path: Path) -> None:
    """Open ``path`` with the API its metadata names and run it once (what fuzz/loader.py does)."""
    model_file = load(path)
    if model_file.config.kind == "decoder":
        Generator(path, threads=1).generate("the cat", max_new_tokens=3)
    elif model_file.config.kind == "encoder-decoder":
        Translator(path, threads=1).translate("the cat", max_length=3, beam_size=2)
    elif model_file.task.type == "sequence-classification":
        Classifier(path, threads=1).classify(["the cat sat", "café 你好"])
    else:
        Encoder(path, threads=1).encode(["the cat sat", "café 你好"])


# ------------------------------------------------------------------------------------------------- files

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_raise_tinybert_errors_only(seeds, tmp_path, data):
    """Random byte edits, truncations and insertions of every seed file: the file loads and runs, or a
    TinyBertError says why."""
    name = data.draw(st.sampled_from(sorted(seeds)))
    raw = bytearray(seeds[name].read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "byte", "truncate", "insert"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "byte":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            raw = bytearray(b"\0")
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(raw))
    try:
        _run_file(path)
    except TinyBertError:
        pass


def _rewrite_header(src: Path, dst: Path, edit) -> Path:
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dst


def test_header_length_claiming_gigabytes(seeds, tmp_path):
    raw = seeds["encoder-int8"].read_bytes()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])
    with pytest.raises(ModelFileError):
        load(path)


QKV = "layers.0.attn.qkv.weight"


def _overlap(header: dict) -> None:
    begin, end = header[QKV]["data_offsets"]
    header[QKV]["data_offsets"] = [0, end - begin]          # on top of another tensor


@pytest.mark.parametrize("edit, words", [
    (_overlap, "safetensors"),
    (lambda h: h[QKV].update(data_offsets=[10 ** 9, 10 ** 9 + 192]), "safetensors"),
    (lambda h: h["__metadata__"].update(format_version="99"), "version"),
    (lambda h: h["__metadata__"].update(tokenizer="{not json"), "tokenizer"),                  # not packed
    (lambda h: h["__metadata__"].update(tokenizer=fmt.pack_tokenizer("{not json")), "tokenizer"),
    (lambda h: h["__metadata__"].update(tokenizer=fmt.pack_tokenizer("[" * 100_000)), "tokenizer"),
    (lambda h: h["__metadata__"].update(tokenizer=base64.b64encode(b"x" * 30).decode()), "tokenizer"),   # no zlib
    (lambda h: h["__metadata__"].update(tokenizer=fmt.pack_tokenizer("{}")[:-8]), "tokenizer"),       # truncated
    (lambda h: h["__metadata__"].update(tokenizer=base64.b64encode(zlib.compress(b"\xff\xfe")).decode()),
     "tokenizer"),                                                                               # not UTF-8
    (lambda h: h["__metadata__"].update(config="[" * 100_000), "config"),  # deeply nested JSON
    (lambda h: h["__metadata__"].update(tokenizer="[" * 100_000), "tokenizer"),   # was a RecursionError
    (lambda h: h["__metadata__"].update(task=json.dumps({"type": "x" * 1_000_000})), "task"),
])
def test_hostile_headers(seeds, tmp_path, edit, words):
    path = _rewrite_header(seeds["encoder-int8"], tmp_path / "hostile.safetensors", edit)
    with pytest.raises(ModelFileError) as info:
        _run_file(path)
    assert words in str(info.value).lower(), str(info.value)


def _rewrite_metadata(src: Path, dst: Path, key: str, edit, tensors_edit=None) -> Path:
    """A copy of ``src`` whose JSON metadata ``key`` is ``edit(value)`` (and whose tensors ``tensors_edit`` may
    change), written with safetensors' own writer: a well-formed file with hostile values."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(src), framework="numpy") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        metadata = dict(fh.metadata())
    if key == fmt.KEY_TOKENIZER:        # stored packed (format.pack_tokenizer)
        metadata[key] = fmt.pack_tokenizer(json.dumps(edit(json.loads(fmt.unpack_tokenizer(metadata[key])))))
    else:
        metadata[key] = json.dumps(edit(json.loads(metadata[key])))
    if tensors_edit is not None:
        tensors_edit(tensors)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def _update(**changes):
    return lambda value: {**value, **changes}


def _rope(**changes):
    return lambda cfg: {**cfg, "rope": {**cfg["rope"], **changes}}


def _rel_bias_rows(rows: int):
    def edit(tensors):
        for side in ("encoder", "decoder"):
            tensors[side + ".rel_bias"] = np.ascontiguousarray(tensors[side + ".rel_bias"][:rows])
    return edit


def _token_id(tok: dict) -> dict:
    tok["model"]["vocab"]["cat"] = 2 ** 31
    return tok


def _template_type_id(tok: dict) -> dict:
    tok["post_processor"]["single"][0]["SpecialToken"]["type_id"] = 2 ** 31
    return tok


@pytest.mark.parametrize("seed, key, edit, tensors_edit, words", [
    ("rope-int8", "config", _update(rope={}), None, "rope"),
    ("rope-int8", "config", _update(rope={"type": "yarn"}), None, "rope"),
    ("rope-int8", "config", _rope(theta="abc"), None, "theta"),
    ("rope-int8", "config", _rope(original_max_position_embeddings="x"), None, "original_max_position_embeddings"),
    ("seq2seq-int8", "config", _update(relative_buckets=2), _rel_bias_rows(2), "relative"),
    ("seq2seq-int8", "config", _update(relative_buckets=3), _rel_bias_rows(3), "relative"),
    ("seq2seq-int8", "config", _update(relative_max_distance=2), None, "relative"),
    ("encoder-int8", "tokenizer", _token_id, None, "tokenizer"),
    ("encoder-int8", "tokenizer", _template_type_id, None, "tokenizer"),
], ids=["rope {}", "rope yarn", "theta abc", "llama3 original x", "buckets 2", "buckets 3", "max distance 2",
        "token id 2**31", "type id 2**31"])
def test_hostile_config_values(seeds, tmp_path, seed, key, edit, tensors_edit, words):
    """Values in a file's config and tokenizer that once escaped as ValueError, TypeError, ZeroDivisionError,
    IndexError or OverflowError: each is a ModelFileError naming the problem."""
    path = _rewrite_metadata(seeds[seed], tmp_path / "hostile.safetensors", key, edit, tensors_edit)
    with pytest.raises(ModelFileError) as info:
        _run_file(path)
    assert words in str(info.value), str(info.value)


HOSTILE_VALUES = ["abc", [32], None, True, -1, 0, 2, 2 ** 21, 2 ** 31, 1e300, float("nan")]


def _config_edits(config: dict) -> list[tuple[str, object, object]]:
    """(field, value, edit) for every field of a config dict and every parameter of its rope dicts (``rope``, and
    ``window_rope`` of local-attention layers)."""
    edits = [(name, value, _update(**{name: value})) for name in config for value in HOSTILE_VALUES]
    for key in ("rope", "window_rope"):
        if isinstance(config.get(key), dict):
            edits += [(f"{key}.{name}", value, _update(**{key: {**config[key], name: value}}))
                      for name in config[key] for value in HOSTILE_VALUES]
    return edits


@pytest.mark.parametrize("seed, key", [("encoder-int8", "config"), ("decoder-int8", "config"), ("rope-int8", "config"),
                                       ("seq2seq-int8", "config"), ("mpnet-int8", "config"),
                                       ("modernbert-int8", "config"), ("modernbert-int8", "task"),
                                       ("mlm-int8", "task"), ("classifier-int8", "task"),
                                       ("encoder-int8", "sentence_transformers")])
def test_every_config_value_is_checked(seeds, tmp_path, seed, key):
    """Every field of a file's config (and of its rope parameters) or task, set to a value of another type, zero,
    negative, tiny, huge or NaN: the file loads and runs (a context too short for the probe text is an InputError),
    or a ModelFileError says why; never another exception."""
    failures = []
    for field, value, edit in _config_edits(json.loads(load(seeds[seed]).metadata[key])):
        path = _rewrite_metadata(seeds[seed], tmp_path / "hostile.safetensors", key, edit)
        try:
            _run_file(path)
        except ModelFileError:
            pass
        except InputError:
            assert field == "max_positions", (field, value)
        except Exception as exc:  # the type is what is under test
            failures.append(f"{key} {field} = {value!r}: {type(exc).__name__}: {str(exc)[:100]}")
    assert not failures, "\n".join(failures)


def test_positions_without_a_tensor_are_bounded(seeds, tmp_path):
    """Rotary and T5 models build position tables no tensor backs: a max_positions above config.MAX_POSITIONS is
    refused before anything allocates them (2**31 positions once asked for 8 GiB)."""
    from tinybert.config import MAX_POSITIONS

    for seed in ("rope-int8", "seq2seq-int8"):
        path = _rewrite_metadata(seeds[seed], tmp_path / "long.safetensors", "config",
                                 _update(max_positions=MAX_POSITIONS + 1))
        with pytest.raises(ModelFileError, match="max_positions"):
            load(path)
        _run_file(_rewrite_metadata(seeds[seed], tmp_path / "ok.safetensors", "config",
                                    _update(max_positions=4096)))


def test_rope_types_agree_with_the_kernels():
    """config.py checks rope dicts with format.ROPE_PARAMETERS; the kernels build tables for SUPPORTED_TYPES."""
    from tinybert import format as fmt
    from tinybert.kernels.rope import SUPPORTED_TYPES

    assert tuple(fmt.ROPE_PARAMETERS) == SUPPORTED_TYPES


def test_missing_nan_and_overflowing_scales(seeds, tmp_path):
    """A missing or NaN scale is refused at load; a finite but absurd scale is refused when the model's values overflow
    (NumericalError), never returned as inf/NaN results."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(seeds["encoder-int8"]))
    meta = load(seeds["encoder-int8"]).metadata
    save_file({k: v for k, v in tensors.items() if k != QKV + ".scale"}, str(tmp_path / "noscale.safetensors"),
              metadata=meta)
    with pytest.raises(ModelFileError, match="missing: " + QKV.replace(".", r"\.") + r"\.scale"):
        load(tmp_path / "noscale.safetensors")                   # an int8 tensor without its scales
    bad = dict(tensors)
    bad["layers.0.mlp.up.weight.scale"] = np.full_like(tensors["layers.0.mlp.up.weight.scale"], np.nan)
    save_file(bad, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load(tmp_path / "nan.safetensors")
    bad["layers.0.mlp.up.weight.scale"] = np.full_like(tensors["layers.0.mlp.up.weight.scale"], 3e38)
    save_file(bad, str(tmp_path / "huge.safetensors"), metadata=meta)
    with pytest.raises(NumericalError, match="non-finite"):
        Encoder(tmp_path / "huge.safetensors").encode("the cat sat")


def test_bad_smoothing_vectors(seeds, tmp_path):
    """An 8-bit-input layer's .smooth must be float32 [K], finite and positive (the input is divided by it)."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(seeds["encoder-int8"]))
    meta = load(seeds["encoder-int8"]).metadata
    name = "layers.0.mlp.up.weight.smooth"
    assert name in tensors
    for value, words in ((np.zeros_like(tensors[name]), "must be positive"),
                         (-tensors[name], "must be positive"),
                         (np.full_like(tensors[name], np.inf), "NaN or infinite"),
                         (tensors[name][:-1], "expected float32"),
                         (tensors[name].astype(np.float16), "expected float32")):
        save_file({**tensors, name: value}, str(tmp_path / "bad.safetensors"), metadata=meta)
        with pytest.raises(ModelFileError, match=words):
            load(tmp_path / "bad.safetensors")
    save_file({**tensors, "layers.0.mlp.norm.weight.smooth": tensors[name]}, str(tmp_path / "odd.safetensors"),
              metadata=meta)
    with pytest.raises(ModelFileError, match="unexpected tensors"):
        load(tmp_path / "odd.safetensors")              # only a quantised linear weight may carry one


def test_loader_never_writes(seeds):
    path = seeds["seq2seq-int8"]
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    _run_file(path)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_sharded_index_cannot_point_outside_the_folder(tmp_path, minilm_dir):
    import shutil

    from tinybert_convert import convert

    folder = tmp_path / "hf"
    shutil.copytree(minilm_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
    for shard in ("../../etc/passwd", "/etc/passwd", "sub/model.safetensors", ".."):
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard}}))
        with pytest.raises(TinyBertError, match="outside the model folder"):
            convert(folder, tmp_path / "out.safetensors")


def test_convert_killed_mid_write_leaves_no_output(tmp_path, minilm_dir):
    """SIGKILL while the converter writes: the target name never holds a partial file (the data goes to a
    temporary file in the same folder, renamed only when complete)."""
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tinybert", "convert", str(minilm_dir), str(out), "--dtype",
                             "fp32", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".tmp") for p in out.parent.iterdir()):
        time.sleep(0.005)
    assert any(p.name.endswith(".tmp") for p in out.parent.iterdir()), "the converter never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    subprocess.run([sys.executable, "-m", "tinybert", "convert", str(minilm_dir), str(out), "--dtype", "fp32",
                    "--quiet"], check=True)
    assert load(out).config.hidden_size == 384


# ------------------------------------------------------------------------------------------------ inputs

@pytest.mark.parametrize("texts", [[""], ["\x00"], ["a\x00b"], ["\ud800"], [" \t\n"], [], [b"bytes"], [None],
                                   "", 5])
def test_hostile_texts(seeds, texts):
    enc = Encoder(seeds["encoder-int8"])
    try:
        out = enc.encode(texts)
        assert np.isfinite(out).all()
    except InputError:
        pass


def test_megabyte_text_and_many_texts(seeds):
    """A 1 MB string is truncated to the model's length; 100,000 texts in one call run batch by batch."""
    enc = Encoder(seeds["encoder-int8"])
    one = enc.encode("the cat " * 131_072)                  # 1 MB
    assert one.shape == (1, 8) and np.isfinite(one).all()
    many = enc.encode(["the cat sat", "a dog"] * 50_000, batch_size=512)
    assert many.shape == (100_000, 8)
    np.testing.assert_array_equal(many[0], many[2])


@pytest.mark.parametrize("batch_size", [0, -1, 10 ** 12, 1.5, "8", None, True])
def test_bad_batch_sizes(seeds, batch_size):
    enc = Encoder(seeds["encoder-int8"])
    if batch_size == 10 ** 12:
        assert enc.encode(["the cat"] * 3, batch_size=batch_size).shape == (3, 8)   # documented: one batch
        return
    with pytest.raises(InputError):
        enc.encode(["the cat"], batch_size=batch_size)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.one_of(
    st.lists(st.lists(st.integers(-2 ** 40, 2 ** 40), min_size=0, max_size=20), min_size=0, max_size=4),
    st.lists(st.integers(-5, 30), max_size=20)),
    dtype=st.sampled_from(["int64", "int32", "int8", "uint64", "float32", "bool", "object"]))
def test_forward_with_any_ids(seeds, ids, dtype):
    enc = Encoder(seeds["encoder-int8"])
    try:
        array = np.array(ids, dtype=object).astype(dtype) if ids else np.array(ids, dtype=dtype)
    except (ValueError, OverflowError, TypeError):
        return
    try:
        out = enc.forward(array)
        assert np.isfinite(out).all()
    except InputError:
        pass


number = st.one_of(st.none(), st.integers(-10, 10 ** 6), st.floats(allow_nan=True, allow_infinity=True),
                   st.booleans(), st.just("3"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_new=number, temperature=number, top_k=number, top_p=number, penalty=number, seed=number, beams=number)
def test_generation_parameters(seeds, max_new, temperature, top_k, top_p, penalty, seed, beams):
    gen = Generator(seeds["decoder-int8"])
    kwargs = dict(max_new_tokens=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=penalty, seed=seed)
    if isinstance(beams, int) and not isinstance(beams, bool) and 1 < beams < 5:
        kwargs = dict(max_new_tokens=max_new, num_beams=beams, length_penalty=temperature)
    try:
        gen.generate("the cat", **kwargs)
    except InputError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(beam=number, max_length=number, min_length=number, lp=number, hyps=number, ngram=number)
def test_translation_parameters(seeds, beam, max_length, min_length, lp, hyps, ngram):
    tr = Translator(seeds["seq2seq-int8"])
    try:
        tr.translate("the cat sat", beam_size=beam, max_length=max_length if max_length != 10 ** 6 else 5,
                     min_length=min_length, length_penalty=lp, num_hypotheses=hyps, no_repeat_ngram_size=ngram)
    except InputError:
        pass


# ------------------------------------------------------------------------------- fuzzers, threads, long runs

def _fuzz(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def test_fuzz_loader_slice(tmp_path):
    import atheris  # noqa: F401  (a test dependency: missing, it fails)
    proc = _fuzz("fuzz.loader", str(tmp_path / "corpus"), "-runs=2000", "-max_total_time=75",
                 f"-artifact_prefix={tmp_path}/")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Done" in proc.stderr


def test_fuzz_inputs_slice(tmp_path):
    import atheris  # noqa: F401  (a test dependency: missing, it fails)
    proc = _fuzz("fuzz.inputs", "-runs=20000", "-max_total_time=15", f"-artifact_prefix={tmp_path}/")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Done" in proc.stderr


def test_fuzz_configs_slice(tmp_path):
    """fuzz/configs.py: hostile config, rope, task, pooling and tokenizer-option values in every seed file, a run and
    a huge-size call each, under -rss_limit_mb=4096 and an address-space limit (the long version: -runs=100000)."""
    import atheris  # noqa: F401  (a test dependency: missing, it fails)
    proc = _fuzz("fuzz.configs", str(tmp_path / "corpus"), "-runs=300", "-max_total_time=60",
                 f"-artifact_prefix={tmp_path}/")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Done 300 runs" in proc.stderr


def test_fuzz_tokenizer_slice(tmp_path):
    """fuzz/tokenizer.py: hostile regexes, ids, models and metadata in the tokenizer JSON, then adversarial texts
    (the long version: -runs=100000)."""
    import atheris  # noqa: F401  (a test dependency: missing, it fails)
    proc = _fuzz("fuzz.tokenizer", str(tmp_path / "corpus"), "-runs=300", "-max_total_time=60",
                 f"-artifact_prefix={tmp_path}/")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Done 300 runs" in proc.stderr


def test_threads_share_models():
    """8 threads × 100 mixed calls (encode, classify, greedy and sampled generation) on shared models equal
    the sequential results (the long version: `python -m fuzz.stress threads`, 8 × 200)."""
    proc = _fuzz("fuzz.stress", "threads", "--threads", "8", "--calls", "100")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert json.loads(proc.stdout)["mismatches"] == 0


def test_memory_stays_flat():
    """RSS growth ≤ 5 % over 2,000 encode and 200 generate calls after warm-up (the long version:
    `python -m fuzz.stress longrun`, 10,000 and 1,000)."""
    proc = _fuzz("fuzz.stress", "longrun", "--encode", "2000", "--generate", "200")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert json.loads(proc.stdout)["growth"] <= 0.05


# ------------------------------------------------------------------------ every other public entry point

text = st.one_of(st.text(max_size=40), st.sampled_from(["the cat sat on the mat", "mat", "", " ", "\x00", "\ud800"]),
                 st.lists(st.sampled_from(["the", "cat", "mat", "café", "你好", "🙂", "\x00"]), max_size=30)
                 .map(" ".join))
texts = st.one_of(text, st.lists(text, max_size=4), st.none(), st.integers())


def _only_input_errors(call) -> None:
    try:
        call()
    except InputError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=texts, b=texts, n=number, m=number, which=st.integers(0, 10),
       aggregation=st.sampled_from(["none", "simple", "first", "average", "max", "other"]))
def test_every_entry_point(seeds, a, b, n, m, which, aggregation):
    """NER, fill-mask, QA, rerank, head logits, streaming, generation from ids, scoring logits, translation from
    ids, summarize, forward: any argument gives a result or an InputError."""
    models = _entry_models(seeds)
    calls = [
        lambda: models["ner"].ner(a, aggregation=aggregation, stride=n),
        lambda: models["fill"].fill(a, top_k=n),
        lambda: models["qa"].answer(a, b, top_k=1 if n is None else n, max_answer_len=30 if m is None else m),
        lambda: models["clf"].rerank(a, b, top_k=n),
        lambda: models["fill"].logits(ids_value(a)),
        lambda: list(models["gen"].stream(a, max_new_tokens=n, temperature=m or 0.0)),
        lambda: models["gen"].generate_ids(ids_value(a), max_new_tokens=n),
        lambda: models["gen"].logits(ids_value(a)),
        lambda: models["tr"].translate_ids(ids_value(b), beam_size=n, max_length=5 if m == 10 ** 6 else m),
        lambda: models["tr"].summarize(a, max_length=5, num_hypotheses=n),
        lambda: models["ner"].forward(ids_value(a), ids_value(b)),
    ]
    _only_input_errors(calls[which])


def test_windows_too_short_for_their_stride(seeds, tmp_path):
    """A window too short to hold more than the tokens it shares (``max_seq_len=2``, or a QA file whose
    max_length is 2) was a ValueError from tokenizers' enable_truncation (found by fuzz/configs.py): an
    InputError."""
    from tinybert import QuestionAnswerer

    with pytest.raises(InputError, match="windows of 2 tokens"):
        QuestionAnswerer(seeds["qa-int8"]).answer("what sat", "the cat sat on the mat", max_seq_len=2)
    path = _rewrite_metadata(seeds["qa-int8"], tmp_path / "short.safetensors", "config", _update(max_length=2))
    with pytest.raises(InputError, match="windows of 2 tokens"):
        QuestionAnswerer(path).answer("what sat", "the cat sat on the mat")


_ENTRY: dict = {}


def _entry_models(seeds) -> dict:
    from tinybert import FillMask, QuestionAnswerer, TokenClassifier

    if not _ENTRY:
        _ENTRY.update(ner=TokenClassifier(seeds["tokens-int8"]), fill=FillMask(seeds["mlm-int8"]),
                      qa=QuestionAnswerer(seeds["qa-int8"]), clf=Classifier(seeds["classifier-int8"]),
                      gen=Generator(seeds["decoder-int8"]), tr=Translator(seeds["seq2seq-int8"]))
    return _ENTRY


def ids_value(value: object) -> object:
    """Hypothesis texts reused as id arrays: a text's code points (often out of range), or the value itself."""
    if isinstance(value, str):
        return [[ord(c) % 64 - 8 for c in value]] if value else []
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [[len(v) for v in value]]
    return value
