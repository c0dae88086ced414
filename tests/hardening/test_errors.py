"""Every deliberate failure: bad model files, unconvertible folders, bad API arguments.

Each case expects the specific TinyBertError subclass and checks that the message names the
problem (the path, the tensor, the key or the argument). The worst inputs also run in a
subprocess to prove they end in an exception, not a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import build_hf_model
from safetensors import safe_open
from tinybert_convert import convert
from tinybert_convert.writer import write_safetensors

import tinybert
from tinybert import format as fmt
from tinybert.errors import (
    ConversionError,
    InputError,
    ModelFileError,
    TinyBertError,
    UnsupportedModelError,
)

ERRORS = (ModelFileError, UnsupportedModelError, ConversionError, InputError)


# --------------------------------------------------------------------------- fixtures / helpers

@pytest.fixture(scope="module")
def bert(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("errors_bert")
    model = build_hf_model("bert", root / "hf", minilm_dir, seed=5)
    files = {dtype: convert(root / "hf", root / f"{dtype}.safetensors", dtype=dtype) for dtype in ("fp32", "int8")}
    return {"model": model, "src": root / "hf", "files": files}


@pytest.fixture(scope="module")
def encoder(bert):
    return tinybert.Encoder(bert["files"]["fp32"])


def read_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="numpy") as fh:
        return {name: fh.get_tensor(name) for name in fh.keys()}, dict(fh.metadata() or {})


def craft(src: Path, dst: Path, tensors_edit=None, metadata_edit=None) -> Path:
    """Copy a tinybert file through the converter's writer, editing tensors and/or metadata."""
    tensors, metadata = read_file(src)
    if tensors_edit:
        tensors_edit(tensors)
    if metadata_edit:
        metadata_edit(metadata)
    write_safetensors(dst, tensors, metadata)
    return dst


def raised(kind, call, *args, **kwargs) -> str:
    """The message of the ``kind`` error ``call`` raises; any other exception type (a bare
    KeyError, TypeError, ...) fails with a clear assertion instead of an opaque test error."""
    try:
        call(*args, **kwargs)
    except Exception as exc:  # the type is what is under test
        assert isinstance(exc, kind), (
            f"expected {kind.__name__}, got a bare {type(exc).__module__}.{type(exc).__name__}: {exc}")
        return str(exc)
    pytest.fail(f"{getattr(call, '__name__', call)} did not raise {kind.__name__}")


def load_error(path: Path, kind=ModelFileError) -> str:
    return raised(kind, tinybert.Encoder, path)


# --------------------------------------------------------------------------- the hierarchy

def test_every_error_is_a_tinybert_error():
    for kind in ERRORS:
        assert issubclass(kind, TinyBertError)
        assert kind is not TinyBertError
        assert getattr(tinybert, kind.__name__) is kind
    assert len(set(ERRORS)) == 4
    for a in ERRORS:  # no subclass catches another's errors by accident
        for b in ERRORS:
            assert a is b or not issubclass(a, b)
    assert issubclass(InputError, ValueError)
    assert tinybert.TinyBertError is TinyBertError


def test_catching_base_class_catches_each(encoder, tmp_path):
    cases = [
        lambda: tinybert.Encoder(tmp_path / "missing.safetensors"),
        lambda: convert(tmp_path / "no-such-folder", tmp_path / "o.safetensors"),
        lambda: encoder.encode(["ok", 3]),
    ]
    caught = []
    for case in cases:
        try:
            case()
        except TinyBertError as exc:
            caught.append(type(exc))
    assert caught == [ModelFileError, ConversionError, InputError]


# --------------------------------------------------------------------------- model files

def test_missing_model_file(tmp_path):
    path = tmp_path / "nope" / "model.safetensors"
    msg = load_error(path)
    assert str(path) in msg
    assert "no such model file" in msg


def test_directory_instead_of_file(tmp_path):
    msg = load_error(tmp_path)
    assert str(tmp_path) in msg


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    msg = load_error(path)
    assert str(path) in msg and "not a valid safetensors file" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    msg = load_error(path)
    assert str(path) in msg and "safetensors" in msg


@pytest.mark.parametrize("where", ["data", "header"])
def test_truncated_file(bert, tmp_path, where):
    raw = bert["files"]["fp32"].read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    cut = 8 + header_len + (len(raw) - 8 - header_len) // 2 if where == "data" else 8 + header_len // 2
    path = tmp_path / f"truncated-{where}.safetensors"
    path.write_bytes(raw[:cut])
    msg = load_error(path)
    assert str(path) in msg and "not a valid safetensors file" in msg


@pytest.mark.parametrize("offset", [0, "middle"])
def test_corrupted_header_json(bert, tmp_path, offset):
    raw = bytearray(bert["files"]["fp32"].read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    at = 8 + (header_len // 2 if offset == "middle" else 0)
    raw[at:at + 4] = b"\x00}{\xff"
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(raw))
    msg = load_error(path)
    assert str(path) in msg and "header" in msg


def test_plain_safetensors_is_not_tinybert(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"weight": np.zeros((3, 4), dtype=np.float32)}, str(path))
    msg = load_error(path)
    assert "not a tinybert file" in msg and str(path) in msg


def test_wrong_format_version(bert, tmp_path):
    path = craft(bert["files"]["fp32"], tmp_path / "v2.safetensors",
                 metadata_edit=lambda m: m.update({fmt.KEY_VERSION: str(fmt.FORMAT_VERSION + 1)}))
    msg = load_error(path)
    assert "format version" in msg and repr(str(fmt.FORMAT_VERSION + 1)) in msg


@pytest.mark.parametrize("key", [fmt.KEY_CONFIG, fmt.KEY_POOLING])
def test_metadata_not_json(bert, tmp_path, key):
    path = craft(bert["files"]["fp32"], tmp_path / "badjson.safetensors",
                 metadata_edit=lambda m: m.update({key: "{not json"}))
    msg = load_error(path)
    assert repr(key) in msg and "JSON" in msg


def test_config_inconsistent_in_file(bert, tmp_path):
    def edit(m):
        cfg = json.loads(m[fmt.KEY_CONFIG])
        cfg["num_heads"] = 5  # 64 is no multiple of 5
        m[fmt.KEY_CONFIG] = json.dumps(cfg)

    msg = load_error(craft(bert["files"]["fp32"], tmp_path / "heads.safetensors", metadata_edit=edit))
    assert "num_heads" in msg


def test_encoder_file_of_the_earlier_vocabulary_loads(bert, tmp_path):
    """Converters before the one block vocabulary wrote an encoder's ``layer_norm_eps``: it is read as
    ``norm_eps``, with the same outputs; a file with both is inconsistent."""
    def rename(m, keep_new=False):
        cfg = json.loads(m[fmt.KEY_CONFIG])
        cfg["layer_norm_eps"] = cfg["norm_eps"] if keep_new else cfg.pop("norm_eps")
        m[fmt.KEY_CONFIG] = json.dumps(cfg)

    old = craft(bert["files"]["fp32"], tmp_path / "old.safetensors", metadata_edit=rename)
    texts = ["an old file", "still loads"]
    expected = tinybert.Encoder(bert["files"]["fp32"]).encode(texts)
    np.testing.assert_array_equal(tinybert.Encoder(old).encode(texts), expected)
    both = craft(bert["files"]["fp32"], tmp_path / "both.safetensors", metadata_edit=lambda m: rename(m, True))
    msg = load_error(both)
    assert "layer_norm_eps" in msg and "norm_eps" in msg


def test_wrong_tensor_shape(bert, tmp_path):
    def edit(t):
        t["layers.1.mlp.up.weight"] = t["layers.1.mlp.up.weight"][:-1].copy()

    msg = load_error(craft(bert["files"]["fp32"], tmp_path / "shape.safetensors", tensors_edit=edit))
    assert "layers.1.mlp.up.weight" in msg
    rows, cols = bert["model"].config.intermediate_size, bert["model"].config.hidden_size
    assert f"[{rows - 1}, {cols}]" in msg and f"[{rows}, {cols}]" in msg


def test_wrong_tensor_dtype(bert, tmp_path):
    def edit(t):
        t["embed.norm.weight"] = t["embed.norm.weight"].astype(np.float16)

    msg = load_error(craft(bert["files"]["fp32"], tmp_path / "dtype.safetensors", tensors_edit=edit))
    assert "embed.norm.weight" in msg and "float16" in msg


@pytest.mark.parametrize("dtype,name", [("fp32", "layers.0.attn_norm.bias"),
                                        ("int8", "layers.1.attn.qkv.weight.scale")])
def test_missing_tensor(bert, tmp_path, dtype, name):
    msg = load_error(craft(bert["files"][dtype], tmp_path / "missing.safetensors",
                           tensors_edit=lambda t: t.pop(name)))
    assert "missing" in msg and name in msg


def test_unexpected_extra_tensor(bert, tmp_path):
    def edit(t):
        t["pooler.dense.weight"] = np.ones((4, 4), dtype=np.float32)

    msg = load_error(craft(bert["files"]["fp32"], tmp_path / "extra.safetensors", tensors_edit=edit))
    assert "unexpected" in msg and "pooler.dense.weight" in msg


@pytest.mark.parametrize("dtype,name", [("fp32", "layers.0.attn.out.weight"),
                                        ("int8", "layers.1.mlp.down.weight.scale")])
def test_nan_in_weight(bert, tmp_path, dtype, name):
    def edit(t):
        value = t[name].copy()
        value.reshape(-1)[value.size // 2] = np.nan
        t[name] = value

    msg = load_error(craft(bert["files"][dtype], tmp_path / "nan.safetensors", tensors_edit=edit))
    assert name in msg and "NaN" in msg


# --------------------------------------------------------------------------- conversion

def _copy_folder(src: Path, dst: Path, drop=()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def _convert_error(src: Path, out: Path, kind) -> str:
    message = raised(kind, convert, src, out)
    assert not out.exists(), "a failed conversion left a file behind"
    return message


def test_convert_missing_folder(tmp_path):
    src = tmp_path / "does-not-exist"
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    assert str(src) in msg


def test_convert_without_config(bert, tmp_path):
    src = _copy_folder(bert["src"], tmp_path / "src", drop=["config.json"])
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    assert "config.json" in msg


def test_convert_without_weights(bert, tmp_path):
    src = _copy_folder(bert["src"], tmp_path / "src", drop=["model.safetensors"])
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    assert "no weights" in msg and "model.safetensors" in msg


def test_convert_without_tokenizer(bert, tmp_path):
    src = _copy_folder(bert["src"], tmp_path / "src", drop=["tokenizer.json", "vocab.txt"])
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    assert "tokenizer" in msg


def test_convert_unsupported_architecture(minilm_dir, tmp_path):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXModel

    torch.manual_seed(0)
    model = GPTNeoXModel(GPTNeoXConfig(vocab_size=1000, max_position_embeddings=64, hidden_size=32,
                                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    src = tmp_path / "gpt_neox"
    model.save_pretrained(src)
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, src / name)
    msg = _convert_error(src, tmp_path / "o.safetensors", UnsupportedModelError)
    assert "gpt_neox" in msg and "llama" in msg and "bert" in msg


def _edit_config(src: Path, **changes) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,names", [
    ({"hidden_size": 32}, ["embed.tokens", "shape"]),
    ({"intermediate_size": 256}, ["mlp.up.weight", "shape"]),
    ({"num_hidden_layers": 3}, ["encoder.layer.2."]),
    ({"num_hidden_layers": 1}, ["more layers", "num_hidden_layers"]),
])
def test_convert_config_inconsistent_with_weights(bert, tmp_path, changes, names):
    src = _copy_folder(bert["src"], tmp_path / "src")
    _edit_config(src, **changes)
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    for name in names:
        assert name in msg


@pytest.mark.parametrize("changes,word", [
    ({"position_embedding_type": "relative_key"}, "relative_key"),
    ({"hidden_act": "silu"}, "silu"),
    ({"is_decoder": True}, "decoder"),
])
def test_convert_unsupported_feature(bert, tmp_path, changes, word):
    src = _copy_folder(bert["src"], tmp_path / "src")
    _edit_config(src, **changes)
    msg = _convert_error(src, tmp_path / "o.safetensors", UnsupportedModelError)
    assert word in msg


def _rewrite_weights_header(path: Path, edit) -> None:
    """Replace the JSON header of a safetensors file by ``edit(header_dict)`` (any JSON value)."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = edit(json.loads(raw[8:8 + header_len]))
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.unlink()  # the copy may be read-only (transformers writes 0600)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + header_len:])


def _first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _drop_key(key):
    def edit(header):
        name = _first_tensor(header)
        header[name] = {k: v for k, v in header[name].items() if k != key}
        return header
    return edit


@pytest.mark.parametrize("damage,words", [
    ("truncated", ["model.safetensors"]),
    ("random bytes", ["model.safetensors"]),
    ("empty", ["model.safetensors"]),
    ("no data_offsets", ["model.safetensors"]),
    ("no shape", ["model.safetensors"]),
    ("header is a list", ["model.safetensors"]),
    ("NaN weight", ["NaN", "embed.norm.weight"]),
])
def test_convert_damaged_weights_file(bert, tmp_path, damage, words):
    """A damaged weights file is a ConversionError naming the file, never a bare KeyError & co."""
    src = _copy_folder(bert["src"], tmp_path / "src")
    weights = src / "model.safetensors"
    raw = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(raw[: len(raw) // 2])
    elif damage == "random bytes":
        weights.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "no data_offsets":
        _rewrite_weights_header(weights, _drop_key("data_offsets"))
    elif damage == "no shape":
        _rewrite_weights_header(weights, _drop_key("shape"))
    elif damage == "header is a list":
        _rewrite_weights_header(weights, lambda header: [1, 2, 3])
    elif damage == "NaN weight":
        from safetensors.numpy import save_file

        tensors, _ = read_file(weights)
        tensors["embeddings.LayerNorm.weight"][3] = np.nan
        save_file(tensors, str(weights))
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    for word in words:
        assert word in msg, msg


@pytest.mark.parametrize("filename", ["config.json", "sentence_bert_config.json"])
def test_convert_json_that_is_not_an_object(bert, tmp_path, filename):
    """Valid JSON of the wrong kind (a list) must give a ConversionError naming the file."""
    src = _copy_folder(bert["src"], tmp_path / "src")
    (src / filename).write_text("[1, 2]")
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    assert filename in msg


def test_convert_config_not_json(bert, tmp_path):
    src = _copy_folder(bert["src"], tmp_path / "src")
    (src / "config.json").write_text("{not json")
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    assert "config.json" in msg and "JSON" in msg


def test_convert_bad_dtype(bert, tmp_path):
    with pytest.raises(ConversionError, match="float16"):
        convert(bert["src"], tmp_path / "o.safetensors", dtype="float16")
    assert not (tmp_path / "o.safetensors").exists()


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "new.safetensors"])
def test_convert_never_writes_into_its_source(bert, tmp_path, name):
    """convert(src, src/"config.json") once replaced the checkpoint's own file: an output inside the source folder
    is refused, even with force=True, and the folder is left as it was."""
    src = _copy_folder(bert["src"], tmp_path / "src")
    before = _listing(src)
    for force in (False, True):
        msg = raised(ConversionError, convert, src, src / name, force=force)
        assert "inside the checkpoint folder" in msg, msg
    assert _listing(src) == before


def _hf_cache(src: Path, root: Path) -> Path:
    """``src`` laid out as the Hugging Face cache does: <repo>/blobs/<hash> files, and the snapshot folder
    <repo>/snapshots/<revision>/<name> of symlinks to ../../blobs/<hash>; returns the snapshot folder."""
    snapshot = root / "models--test--bert" / "snapshots" / "0123abcd"
    blobs = root / "models--test--bert" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, path in enumerate(sorted(p for p in src.iterdir() if p.is_file())):
        shutil.copy(path, blobs / f"blob{i}")
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    return snapshot


def test_convert_never_writes_onto_a_cache_blob(bert, tmp_path):
    """In the Hugging Face cache the files the converter reads are blobs the snapshot links to: an output that is
    one of them, or a link to one, is refused too."""
    snapshot = _hf_cache(bert["src"], tmp_path / "cache")
    blob = (snapshot / "model.safetensors").resolve()
    link = tmp_path / "link.safetensors"
    link.symlink_to(blob)
    before = _listing(tmp_path / "cache")
    for out in (blob, link):
        msg = raised(ConversionError, convert, snapshot, out, force=True)
        assert "inside the checkpoint folder" in msg, msg
    assert _listing(tmp_path / "cache") == before


def test_convert_replaces_an_existing_file_only_with_force(bert, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"an earlier file")
    msg = raised(ConversionError, convert, bert["src"], out)
    assert str(out) in msg and "force" in msg
    assert out.read_bytes() == b"an earlier file"
    convert(bert["src"], out, dtype="fp32", force=True)
    assert out.read_bytes() == bert["files"]["fp32"].read_bytes()


def test_cli_convert_force(bert, tmp_path, capsys):
    from tinybert.cli import main

    out = tmp_path / "o.safetensors"
    out.write_bytes(b"an earlier file")
    assert main(["convert", str(bert["src"]), str(out), "--dtype", "fp32", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier file"
    assert main(["convert", str(bert["src"]), str(out), "--dtype", "fp32", "--quiet", "--force"]) == 0
    assert out.read_bytes() == bert["files"]["fp32"].read_bytes()


@pytest.mark.parametrize("kind", ["folder", "missing folder", "read-only folder"])
def test_convert_checks_the_output_first(bert, tmp_path, kind):
    """An output that is a folder or cannot be written once gave a bare OSError after the whole conversion: it is
    a ConversionError before anything is read (the source's config.json is broken here, and never reached)."""
    src = _copy_folder(bert["src"], tmp_path / "src")
    (src / "config.json").write_text("{not json")
    if kind == "folder":
        out, words = tmp_path, "is a folder"
    elif kind == "missing folder":
        out, words = tmp_path / "nowhere" / "o.safetensors", "does not exist"
    elif os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        out, words = tmp_path / "ro" / "o.safetensors", "cannot write"
    else:   # root writes through permission bits; sysfs refuses to create files even for root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs a non-root user or Linux's sysfs")
        out, words = Path("/sys/tinybert-test.safetensors"), "cannot write"
    msg = raised(ConversionError, convert, src, out)
    assert words in msg and "config.json" not in msg, msg
    assert not (out.exists() and out.is_file())


def test_convert_reads_a_hugging_face_cache_snapshot(bert, tmp_path):
    """The cache's own layout (snapshots/<revision>/<file> → ../../blobs/<hash>) converts, to the same bytes as
    the plain folder."""
    snapshot = _hf_cache(bert["src"], tmp_path / "cache")
    out = convert(snapshot, tmp_path / "o.safetensors", dtype="fp32")
    assert out.read_bytes() == bert["files"]["fp32"].read_bytes()


def _link_outside(name: str):
    """The folder's ``name`` replaced by a symlink to a copy of it outside the folder."""
    def edit(src: Path) -> None:
        outside = src.parent / "outside"
        outside.mkdir(exist_ok=True)
        shutil.move(src / name, outside / name)
        (src / name).symlink_to(outside / name)
    return edit


def _sharded_with_outside_shard(src: Path) -> None:
    """model.safetensors as a one-shard index whose shard is a symlink leading out of the folder."""
    tensors, _ = read_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "shard-1.safetensors"
                                                                                 for k in tensors}}))
    from safetensors.numpy import save_file

    (src.parent / "outside").mkdir(exist_ok=True)
    save_file(tensors, str(src.parent / "outside" / "shard-1.safetensors"))
    (src / "shard-1.safetensors").symlink_to(src.parent / "outside" / "shard-1.safetensors")


def _pooling_at(path: str):
    def edit(src: Path) -> None:
        (src.parent / "outside").mkdir(exist_ok=True)
        (src.parent / "outside" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
        (src / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": path, "type": "sentence_transformers.models.Pooling"}]))
    return edit


@pytest.mark.parametrize("damage", [
    _link_outside("model.safetensors"), _link_outside("config.json"), _link_outside("tokenizer.json"),
    _sharded_with_outside_shard, _pooling_at("../outside"), _pooling_at(str(Path("/tmp").resolve())),
], ids=["weights", "config.json", "tokenizer.json", "shard", "modules.json ../outside", "modules.json absolute"])
def test_convert_reads_nothing_outside_the_folder(bert, tmp_path, damage):
    """A modules.json path of ../outside was read, and symlinks leading out of the folder were followed: both are
    refused (only the Hugging Face cache's links into its blobs are followed)."""
    src = _copy_folder(bert["src"], tmp_path / "src")
    damage(src)
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    assert "outside the model folder" in msg, msg


def test_convert_cuts_long_source_strings(bert, tmp_path):
    """A 110 MB _name_or_path once made a file the loader refuses (safetensors reads headers up to 100 MB): the
    free-form source metadata keeps at most 1,024 characters of each string."""
    src = _copy_folder(bert["src"], tmp_path / "src")
    _edit_config(src, _name_or_path="x" * 110_000_000, architectures=["BertModel", "y" * 5000])
    out = convert(src, tmp_path / "o.safetensors", dtype="fp32")
    source = json.loads(tinybert.Encoder(out).metadata[fmt.KEY_SOURCE])
    assert source["name_or_path"] == "x" * 1024
    assert source["architectures"] == ["BertModel", "y" * 1024]


def test_writer_refuses_metadata_the_loader_could_not_read(tmp_path):
    """Whatever else makes the header too large (a huge label or tokenizer) is a ConversionError naming the
    entry, and nothing is written."""
    from tinybert_convert.writer import HEADER_LIMIT

    out = tmp_path / "o.safetensors"
    msg = raised(ConversionError, write_safetensors, out, {"t": np.zeros(2, np.float32)},
                 {"format": "tinybert", "task": "z" * HEADER_LIMIT})
    assert "'task'" in msg, msg
    assert list(tmp_path.iterdir()) == []


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


def _modules(kind: object, path: object):
    def edit(src: Path) -> None:
        (src / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": path, "type": kind}]))
    return edit


def _nested_weights_header(src: Path) -> None:
    weights = src / "model.safetensors"
    raw = weights.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    deep = _nest(100_000).encode()          # deeper than json.loads' stack
    weights.unlink()                        # the copy may be read-only (transformers writes 0600)
    weights.write_bytes(len(deep).to_bytes(8, "little") + deep + raw[8 + header_len:])


def _bpe_merge_outside_vocabulary(src: Path) -> None:
    """A BPE merge whose result is not in the vocabulary: tokenizers panics while deserialising (a
    PanicException, which ``except Exception`` misses; found by fuzz/tokenizer.py)."""
    spec = json.loads((src / "tokenizer.json").read_text())
    spec["model"] = {"type": "BPE", "vocab": {"[UNK]": 0, "cat": 1, "dog": 2}, "merges": ["cat dog"],
                     "unk_token": "[UNK]"}
    (src / "tokenizer.json").write_text(json.dumps(spec))


def _vocab_only(text: str):
    def edit(src: Path) -> None:
        (src / "tokenizer.json").unlink()
        (src / "vocab.txt").write_text(text)
    return edit


@pytest.mark.parametrize("damage, words", [
    (lambda src: (src / "config.json").write_text(_nest(100_000)), ["config.json", "JSON"]),
    (lambda src: (src / "config.json").write_text('{"model_type": "bert", "x": ' + _nest(100_000) + "}"),
     ["config.json", "JSON"]),
    (_nested_weights_header, ["model.safetensors"]),
    (lambda src: _edit_config(src, hidden_size="abc"), ["config.json", "hidden_size"]),
    (lambda src: _edit_config(src, hidden_size=[32]), ["config.json", "hidden_size"]),
    (lambda src: _edit_config(src, layer_norm_eps="tiny"), ["config.json", "layer_norm_eps"]),
    (lambda src: _edit_config(src, num_attention_heads=0), ["config.json", "num_attention_heads"]),
    (_modules(5, ""), ["modules.json", "type"]),
    (_modules("sentence_transformers.models.Pooling", 5), ["modules.json", "path"]),
    (lambda src: (src / "tokenizer.json").write_bytes(b'{"version": "1.0", "x": "\xff\xfe"}'),
     ["tokenizer.json", "UTF-8"]),
    (_vocab_only(""), ["vocab.txt"]),
    (lambda src: (_vocab_only("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")(src),
                  (src / "tokenizer_config.json").write_text("[1, 2]")), ["tokenizer_config.json"]),
    (_bpe_merge_outside_vocabulary, ["tokenizer does not load"]),
], ids=["nested config.json", "nested value in config.json", "nested weights header", "hidden_size abc",
        "hidden_size [32]", "layer_norm_eps tiny", "num_attention_heads 0", "modules.json type int",
        "modules.json path int", "tokenizer.json not UTF-8", "empty vocab.txt", "tokenizer_config.json a list",
        "tokenizer.json BPE panics"])
def test_convert_hostile_checkpoint(bert, tmp_path, damage, words):
    """Checkpoint files that once escaped as RecursionError, ValueError, TypeError, ZeroDivisionError,
    AttributeError, UnicodeDecodeError or a Rust panic: a ConversionError naming the file (and key), and nothing
    written."""
    src = _copy_folder(bert["src"], tmp_path / "src")
    damage(src)
    msg = _convert_error(src, tmp_path / "o.safetensors", ConversionError)
    for word in words:
        assert word in msg, msg


HOSTILE_VALUES = ["abc", [32], {}, None, True, -1, 0, 2 ** 31, 1e300, float("nan")]


@pytest.fixture(scope="module")
def generative_folders(tmp_path_factory, bpe_tokenizer_file) -> dict[str, Path]:
    """Random transformers decoders and encoder-decoders saved as checkpoint folders (not converted)."""
    from conftest import build_hf_decoder, build_hf_seq2seq

    root = tmp_path_factory.mktemp("generative")
    folders = {}
    for name in ("gpt2", "llama-llama3"):
        build_hf_decoder(name, root / name, bpe_tokenizer_file)
        folders[name] = root / name
    for kind in ("t5-v1.0", "bart"):
        build_hf_seq2seq(kind).save_pretrained(root / kind)
        shutil.copy(bpe_tokenizer_file, root / kind / "tokenizer.json")
        folders[kind] = root / kind
    return folders


def _config_edits(config: dict) -> list[tuple[str, dict]]:
    """(what, edited config) for every key, and every key of a nested object (rope parameters), set to each
    hostile value."""
    edits = []
    for key, original in config.items():
        edits += [(f"{key} = {value!r}", {**config, key: value}) for value in HOSTILE_VALUES]
        if isinstance(original, dict):
            edits += [(f"{key}.{inner} = {value!r}", {**config, key: {**original, inner: value}})
                      for inner in original for value in HOSTILE_VALUES]
    return edits


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama-llama3", "t5-v1.0", "bart"])
def test_convert_every_config_value_is_checked(request, tmp_path, family):
    """Every key of a config.json (and of its rope parameters) set to a value of another type, zero, negative,
    huge or NaN: the folder converts, or a ConversionError / UnsupportedModelError says why; never another
    exception, never a file left behind by a failure."""
    original = (request.getfixturevalue("bert")["src"] if family == "bert"
                else request.getfixturevalue("generative_folders")[family])
    src = _copy_folder(original, tmp_path / "src")
    out = tmp_path / "o.safetensors"
    failures = []
    for what, config in _config_edits(json.loads((original / "config.json").read_text())):
        (src / "config.json").write_text(json.dumps(config))
        try:
            convert(src, out, dtype="fp32")
            out.unlink()
        except (ConversionError, UnsupportedModelError):
            if out.exists():
                failures.append(f"{what}: a failed conversion left {out}")
        except Exception as exc:  # the type is what is under test
            failures.append(f"{what}: {type(exc).__name__}: {str(exc)[:100]}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- forward() arguments

def _ids(n=6):
    return np.arange(100, 100 + 2 * n, dtype=np.int64).reshape(2, n)


@pytest.mark.parametrize("case,words", [
    ("id == vocab", ["input_ids", "[0,"]),
    ("id >> vocab", ["input_ids", "[0,"]),
    ("negative id", ["input_ids", "[0,"]),
    ("float ids", ["input_ids", "float"]),
    ("1-D ids", ["input_ids", "2-D"]),
    ("3-D ids", ["input_ids", "2-D"]),
    ("ragged ids", ["input_ids", "rectangular"]),
    ("empty ids", ["input_ids", "empty"]),
    ("mask shape", ["attention_mask", "shape"]),
    ("mask value 2", ["attention_mask", "0 and 1"]),
    ("mask value -1", ["attention_mask", "0 and 1"]),
    ("type id out of range", ["token_type_ids", "[0, 2)"]),
    ("negative type id", ["token_type_ids", "[0, 2)"]),
    ("type shape", ["token_type_ids", "shape"]),
    ("too long", ["sequence length", "positions"]),
])
def test_forward_input_errors(encoder, case, words):
    cfg = encoder.config
    ids = _ids()
    kwargs = {}
    if case == "id == vocab":
        ids[0, 2] = cfg.vocab_size
    elif case == "id >> vocab":
        ids[1, 3] = 2**40
    elif case == "negative id":
        ids[1, 0] = -1
    elif case == "float ids":
        ids = ids.astype(np.float32)
    elif case == "1-D ids":
        ids = ids[0]
    elif case == "3-D ids":
        ids = ids[None]
    elif case == "ragged ids":
        ids = [[101, 2000, 102], [101, 102]]
    elif case == "empty ids":
        ids = np.zeros((2, 0), dtype=np.int64)
    elif case == "mask shape":
        kwargs["attention_mask"] = np.ones((2, ids.shape[1] + 1), dtype=np.int64)
    elif case == "mask value 2":
        mask = np.ones_like(ids)
        mask[0, -1] = 2
        kwargs["attention_mask"] = mask
    elif case == "mask value -1":
        mask = np.ones_like(ids)
        mask[1, -1] = -1
        kwargs["attention_mask"] = mask
    elif case == "type id out of range":
        types = np.zeros_like(ids)
        types[0, 1] = cfg.type_vocab_size
        kwargs["token_type_ids"] = types
    elif case == "negative type id":
        types = np.zeros_like(ids)
        types[0, 1] = -1
        kwargs["token_type_ids"] = types
    elif case == "type shape":
        kwargs["token_type_ids"] = np.zeros((1, ids.shape[1]), dtype=np.int64)
    elif case == "too long":
        ids = np.full((1, cfg.max_positions - cfg.position_offset + 1), 1000, dtype=np.int64)
    assert cfg.type_vocab_size == 2  # the expected messages above assume a BERT with 2 types
    with pytest.raises(InputError) as info:
        encoder.forward(ids, **kwargs)
    for word in words:
        assert word in str(info.value), (case, str(info.value))


def test_forward_longest_allowed_sequence_works(encoder, bert, hf_tokenizer):
    """The boundary: exactly the position table's length is accepted and matches transformers."""
    import torch

    length = encoder.config.max_positions - encoder.config.position_offset
    ids = np.random.default_rng(1).integers(1000, 5000, size=(1, length))
    got = encoder.forward(ids)
    with torch.no_grad():
        expected = bert["model"](input_ids=torch.as_tensor(ids)).last_hidden_state.numpy()
    assert np.abs(got - expected).max() <= 1e-4


# --------------------------------------------------------------------------- encode() arguments

@pytest.fixture(scope="module")
def long_text(sentences) -> str:
    words = []
    for sentence in sentences:
        words.extend(sentence.split())
        if len(words) >= 5000:
            break
    return " ".join(words[:5000])


@pytest.mark.parametrize("which", ["bert-fp32", "minilm-int8"])
def test_encode_truncates_long_text(which, encoder, minilm_files, hf_tokenizer, long_text):
    enc = encoder if which == "bert-fp32" else tinybert.Encoder(minilm_files["int8"])
    length = enc.config.max_length
    if which == "minilm-int8":
        assert length < enc.config.max_positions  # sentence-transformers' cap, not the table
    batch = hf_tokenizer([long_text], truncation=True, max_length=length, return_tensors="np")
    assert batch["input_ids"].shape == (1, length)  # transformers truncated it
    hidden = enc.forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    expected = hidden.mean(axis=1, dtype=np.float64)
    if enc.pooling["normalize"]:
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    got = enc.encode(long_text)
    assert got.shape == (1, enc.dimension)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the whole text and the text cut to the kept tokens give the same vector
    short = hf_tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    np.testing.assert_allclose(enc.encode([short, long_text])[1], got[0], atol=1e-5)


@pytest.mark.parametrize("texts,words", [
    # An empty list and empty texts are valid, as in sentence-transformers (tests/api/test_sentence_transformers.py).
    (["fine", 3], ["texts[1]", "int"]),
    (["fine", None], ["texts[1]", "NoneType"]),
    ([b"bytes"], ["texts[0]", "bytes"]),
    (None, ["string"]),
    (42, ["string"]),
    ({"a"}, ["set"]),
    (np.array([[" a"]]), ["numpy", "1-D"]),
])
def test_encode_bad_texts(encoder, texts, words):
    message = raised(InputError, encoder.encode, texts)
    for word in words:
        assert word in message, message


def test_encode_text_with_lone_surrogate(encoder):
    """A str that is not valid Unicode text (a lone surrogate, as Python makes from undecodable
    bytes with errors="surrogateescape", e.g. sys.stdin under a UTF-8 locale) is bad input."""
    message = raised(InputError, encoder.encode, ["fine", "caf\udce9 au lait"])
    assert "texts[1]" in message


@pytest.mark.parametrize("kwargs,words", [
    ({"batch_size": 0}, ["batch_size", "0"]),
    ({"batch_size": -3}, ["batch_size", "-3"]),
    ({"batch_size": 2.5}, ["batch_size", "2.5"]),
    ({"batch_size": True}, ["batch_size"]),
    ({"pooling": "median"}, ["pooling", "median"]),
    ({"pooling": "MEAN"}, ["pooling", "MEAN"]),
    ({"precision": "int4"}, ["precision", "int4"]),
    ({"truncate_dim": 0}, ["truncate_dim", "0"]),
    ({"truncate_dim": 10_000}, ["truncate_dim", "10000"]),
    ({"prompt_name": "nope"}, ["prompt_name", "nope"]),
    ({"convert_to_tensor": True}, ["convert_to_tensor"]),
    ({"device": "cuda"}, ["cpu"]),
])
def test_encode_bad_arguments(encoder, kwargs, words):
    with pytest.raises(InputError) as info:
        encoder.encode(["a sentence"], **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize("threads", [0, -1, 10_000, 1.5, True, "2"])
def test_bad_threads(bert, threads):
    with pytest.raises(InputError) as info:
        tinybert.Encoder(bert["files"]["int8"], threads=threads)
    assert "threads" in str(info.value) and repr(threads) in str(info.value)


# --------------------------------------------------------------------------- no crashes

_CRASH_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tinybert
    from tinybert.errors import TinyBertError

    enc = tinybert.Encoder(sys.argv[1])
    V = enc.config.vocab_size
    ok = np.full((2, 5), 1000, dtype=np.int64)
    i64 = np.iinfo(np.int64)
    cases = {
        "id=vocab": lambda: enc.forward(np.full((2, 5), V)),
        "id=2**31 (wraps in int32)": lambda: enc.forward(np.full((1, 4), 2**31 + 5)),
        "id=2**32 (wraps to 0)": lambda: enc.forward(np.full((1, 4), 2**32)),
        "id=int64 max": lambda: enc.forward(np.full((1, 4), i64.max)),
        "id=int64 min": lambda: enc.forward(np.full((1, 4), i64.min)),
        "id=uint64 max": lambda: enc.forward(np.full((1, 4), np.iinfo(np.uint64).max, dtype=np.uint64)),
        "id=-1": lambda: enc.forward([[101, -1, 102]]),
        "type=2**31": lambda: enc.forward(ok, token_type_ids=np.full((2, 5), 2**31)),
        "type=-2**31": lambda: enc.forward(ok, token_type_ids=np.full((2, 5), -2**31)),
        "mask=256 (wraps in uint8)": lambda: enc.forward(ok, attention_mask=np.full((2, 5), 256)),
        "mask=2": lambda: enc.forward(ok, attention_mask=np.full((2, 5), 2)),
        "seq 100000": lambda: enc.forward(np.full((1, 100000), 1000)),
        "nan ids": lambda: enc.forward(np.full((1, 3), np.nan)),
        "object ids": lambda: enc.forward(np.array([[1, None]], dtype=object)),
        "string ids": lambda: enc.forward([["a", "b"]]),
        "None ids": lambda: enc.forward(None),
        "0x0 ids": lambda: enc.forward(np.zeros((0, 0), dtype=np.int64)),
        "bad texts": lambda: enc.encode(["ok", None]),
    }
    result = {}
    for name, case in cases.items():
        try:
            case()
            result[name] = "no error"
        except TinyBertError as exc:
            result[name] = type(exc).__name__
        except BaseException as exc:
            result[name] = "BARE " + type(exc).__name__ + ": " + str(exc)[:200]
    # still usable afterwards
    vec = enc.encode(["after all that, a normal sentence"])
    result["after"] = bool(np.isfinite(vec).all())
    print(json.dumps(result))
""")


def test_worst_inputs_raise_not_crash(bert):
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(bert["files"]["int8"])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"return code {proc.returncode} (negative = killed by a signal)\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("after") is True
    bad = {name: outcome for name, outcome in result.items() if outcome != "InputError"}
    assert not bad, f"cases that did not raise InputError: {bad}"
