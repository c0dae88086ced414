"""The sentence-transformers surface (Encoder.encode's arguments, encode_query / encode_document, similarity,
Classifier.predict / rank) against sentence-transformers itself on the same checkpoints: the real
all-MiniLM-L6-v2 and small random models configured with prompts. References are loaded once per module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentence_transformers as st
from conftest import build_hf_model, save_as_sentence_transformer
from safetensors import safe_open
from tinybert_convert import convert
from tinybert_convert.writer import write_safetensors

import tinybert
from tinybert import format as fmt

PRECISIONS = ["float32", "int8", "uint8", "binary", "ubinary"]
PROMPTS = {"query": "query: ", "passage": "passage: ", "classify": "Classify the topic of this text: "}


@pytest.fixture(scope="module")
def texts(sentences) -> list[str]:
    # Real sentences, an empty text (the tokenizer's [CLS] [SEP] alone), whitespace, one past max_seq_length.
    return sentences[:24] + ["", "   ", " ".join(sentences[100:140])]


@pytest.fixture(scope="module")
def minilm_st(minilm_dir):
    return st.SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="module")
def minilm(minilm_files) -> dict[str, tinybert.Encoder]:
    return {dtype: tinybert.Encoder(path) for dtype, path in minilm_files.items()}


@pytest.fixture(scope="module")
def prompted(tmp_path_factory, minilm_dir):
    """A random BERT saved as a sentence-transformers folder (mean pooling, Normalize, max_seq_length 48) with
    prompts, a default prompt, dot similarity and a truncate_dim; converted fp32; the SentenceTransformer of the
    same folder."""
    root = tmp_path_factory.mktemp("st_prompted")
    folder = root / "hf"
    build_hf_model("bert", folder, minilm_dir, seed=11)
    save_as_sentence_transformer(folder, max_seq_length=48)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": PROMPTS, "default_prompt_name": "classify", "similarity_fn_name": "dot", "truncate_dim": 48}))
    path = convert(folder, root / "fp32.safetensors", dtype="fp32")
    return tinybert.Encoder(path), st.SentenceTransformer(str(folder), device="cpu"), folder


def _same_quantized(ours: np.ndarray, ref: np.ndarray, precision: str, floats: np.ndarray) -> None:
    """Same shape and dtype; values equal up to float noise: a float32 value off by ~1e-7 can fall into the
    next int8 bucket, or flip the sign bit of a value within 1e-6 of zero."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (precision, ours.shape, ours.dtype, ref.dtype)
    if precision == "float32":
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    elif precision in ("int8", "uint8"):
        diff = np.abs(ours.astype(int) - ref.astype(int))
        # each value off by one must lie at a bucket boundary, where float noise decides
        starts = floats.min(0)
        steps = np.where(floats.max(0) == starts, 1, (floats.max(0) - starts) / 255)
        position = (floats - starts) / steps
        at_boundary = np.abs(position - np.round(position)) < 0.02
        assert diff.max() <= 1 and at_boundary[diff == 1].all(), (precision, diff.max(), (diff == 0).mean())
        assert (diff == 0).mean() >= 0.99
    else:
        flipped = np.unpackbits(ours.view(np.uint8), axis=-1) != np.unpackbits(ref.view(np.uint8), axis=-1)
        assert (np.abs(floats[flipped[:, :floats.shape[1]]]) < 1e-5).all(), precision


# --------------------------------------------------------------------------- all-MiniLM-L6-v2

def test_minilm_encode_matches_sentence_transformers(minilm, minilm_st, texts):
    ref = minilm_st.encode(texts)
    got = minilm["fp32"].encode(texts)
    assert got.shape == ref.shape == (len(texts), 384) and got.dtype == ref.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    int8 = minilm["int8"].encode(texts)
    cos = (int8 * ref).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() >= 0.999, cos
    # the same texts as a tuple, a numpy array of strings, a generator; texts= and inputs= name them too
    enc = minilm["fp32"]
    for form in (tuple(texts), np.array(texts), (t for t in texts)):
        np.testing.assert_array_equal(enc.encode(form), got)
    np.testing.assert_array_equal(enc.encode(texts=texts[:3]), got[:3])
    np.testing.assert_array_equal(enc.encode(inputs=texts[:3]), got[:3])
    # the old keyword names still work and mean what they meant
    np.testing.assert_array_equal(enc.encode(texts, 32, None, None, False), got)
    raw = enc.encode(texts, normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), got, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_minilm_single_string_and_empty_input(minilm, minilm_st, texts):
    enc = minilm["fp32"]
    ref = minilm_st.encode(texts[0])
    assert ref.shape == (384,)
    got = enc.encode(texts[0])
    assert got.shape == (1, 384)             # tinybert's rule for one string (see docs/encoder.md)
    np.testing.assert_allclose(got[0], ref, atol=1e-5)
    empty = enc.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    assert enc.encode([], precision="ubinary").shape == (0, 48)
    assert enc.encode([], convert_to_numpy=False) == []
    # "" is [CLS] [SEP] alone, as sentence-transformers encodes it
    assert enc.tokenizer.encode("").ids == [101, 102]
    np.testing.assert_allclose(enc.encode([""])[0], minilm_st.encode([""])[0], atol=1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_minilm_precisions(minilm, minilm_st, texts, precision):
    floats = minilm_st.encode(texts)
    ref = minilm_st.encode(texts, precision=precision)
    _same_quantized(minilm["fp32"].encode(texts, precision=precision), ref, precision, floats)
    # quantisation itself is exact: the same floats give the same values
    from sentence_transformers.util.quantization import quantize_embeddings

    from tinybert.api.embeddings import quantize_embeddings as ours

    np.testing.assert_array_equal(ours(floats, precision), quantize_embeddings(floats, precision=precision))
    assert ours(floats, precision).dtype == quantize_embeddings(floats, precision=precision).dtype
    int8 = minilm["int8"].encode(texts, precision=precision)
    assert int8.shape == ref.shape and int8.dtype == ref.dtype


def test_minilm_int8_of_one_text_is_refused_as_sentence_transformers_does(minilm, minilm_st):
    with pytest.raises(ValueError):
        minilm_st.encode(["one text"], precision="int8")
    with pytest.raises(tinybert.InputError, match="single embedding"):
        minilm["fp32"].encode(["one text"], precision="int8")


@pytest.mark.parametrize("normalize_embeddings", [False, True])
@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_minilm_truncate_dim(minilm, minilm_st, texts, normalize_embeddings, precision):
    # sentence-transformers cuts after the Normalize module and normalises again (normalize_embeddings) after
    # the cut, then quantises: a cut vector of a normalised model is not of length 1 unless asked for.
    kwargs = dict(truncate_dim=100, normalize_embeddings=normalize_embeddings, precision=precision)
    floats = minilm_st.encode(texts, truncate_dim=100, normalize_embeddings=normalize_embeddings)
    ref = minilm_st.encode(texts, **kwargs)
    got = minilm["fp32"].encode(texts, **kwargs)
    _same_quantized(got, ref, precision, floats)
    if precision == "float32":
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5) == normalize_embeddings


def test_minilm_convert_to_numpy_false(minilm, texts):
    enc = minilm["fp32"]
    rows = enc.encode(texts, convert_to_numpy=False, precision="uint8")
    assert isinstance(rows, list) and len(rows) == len(texts)
    assert all(r.shape == (384,) and r.dtype == np.uint8 for r in rows)
    np.testing.assert_array_equal(np.stack(rows), enc.encode(texts, precision="uint8"))


def test_minilm_model_properties_and_similarity(minilm, minilm_st, texts):
    enc = minilm["fp32"]
    assert enc.max_seq_length == minilm_st.max_seq_length == 256
    assert enc.get_sentence_embedding_dimension() == minilm_st.get_sentence_embedding_dimension() == 384
    assert enc.prompts == minilm_st.prompts and enc.default_prompt_name is minilm_st.default_prompt_name
    assert enc.similarity_fn_name == minilm_st.similarity_fn_name == "cosine"
    # a file converted before prompts were carried has no such metadata: it loads with the defaults
    enc_old = tinybert.Encoder(_without_st_metadata(enc.path))
    assert (enc_old.prompts, enc_old.similarity_fn_name, enc_old.truncate_dim) == (minilm_st.prompts, "cosine", None)
    a, b = minilm_st.encode(texts[:5]), minilm_st.encode(texts[5:12])
    for name in fmt.SIMILARITY_FUNCTIONS:
        enc.similarity_fn_name = name
        minilm_st.similarity_fn_name = name
        got = enc.similarity(a, b)
        assert got.shape == (5, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, minilm_st.similarity(a, b).numpy(), rtol=1e-6, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(enc.similarity(a[0], list(b)), minilm_st.similarity(a[0], b).numpy(), rtol=1e-6,
                                   atol=1e-5)
    enc.similarity_fn_name = minilm_st.similarity_fn_name = "cosine"
    with pytest.raises(tinybert.InputError, match="similarity_fn_name"):
        enc.similarity_fn_name = "maxsim"


def _without_st_metadata(path: Path) -> Path:
    with safe_open(str(path), framework="numpy") as fh:
        tensors, metadata = {n: fh.get_tensor(n) for n in fh.keys()}, dict(fh.metadata())
    del metadata[fmt.KEY_SENTENCE_TRANSFORMERS]
    out = path.with_name(path.stem + "-old.safetensors")
    write_safetensors(out, tensors, metadata)
    return out


# --------------------------------------------------------------------------- a random model with prompts

def test_prompts_are_carried_through_conversion(prompted):
    enc, ref, _ = prompted
    assert enc.prompts == ref.prompts == {"query": "query: ", "document": "", **PROMPTS}
    assert enc.default_prompt_name == ref.default_prompt_name == "classify"
    assert enc.similarity_fn_name == ref.similarity_fn_name == "dot"
    assert enc.truncate_dim == ref.truncate_dim == 48
    assert enc.max_seq_length == ref.max_seq_length == 48
    assert enc.get_sentence_embedding_dimension() == ref.get_sentence_embedding_dimension() == 48


@pytest.mark.parametrize("kwargs", [
    {},                                             # the default prompt ("classify")
    {"prompt_name": "query"},
    {"prompt_name": "passage", "truncate_dim": 16},
    {"prompt": "Represent this: "},
    {"prompt": ""},                                 # an explicit empty prompt: no default prompt
    {"prompt_name": "passage", "prompt": "wins: "},  # prompt wins over prompt_name
    {"truncate_dim": 64, "normalize_embeddings": True},
])
@pytest.mark.parametrize("method", ["encode", "encode_query", "encode_document"])
def test_prompted_model_matches_sentence_transformers(prompted, texts, kwargs, method):
    enc, ref, _ = prompted
    sample = texts[:6] + texts[-3:]
    expected = getattr(ref, method)(sample, **kwargs)
    got = getattr(enc, method)(sample, **kwargs)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(enc.similarity(got, got[:2]), ref.similarity(expected, expected[:2]).numpy(),
                               atol=1e-5)


def test_prompts_change_the_vectors(prompted, texts):
    # The comparisons above would pass with prompts ignored if prompts changed nothing: they do change it.
    enc, _, _ = prompted
    plain, query = enc.encode(texts[:4], prompt=""), enc.encode_query(texts[:4])
    assert np.abs(plain - query).max() > 1e-2
    assert np.abs(enc.encode(texts[:4]) - plain).max() > 1e-2


def test_bad_sentence_transformers_metadata_is_a_model_file_error(prompted, tmp_path):
    enc, _, _ = prompted
    with safe_open(str(enc.path), framework="numpy") as fh:
        tensors, metadata = {n: fh.get_tensor(n) for n in fh.keys()}, dict(fh.metadata())
    good = json.loads(metadata[fmt.KEY_SENTENCE_TRANSFORMERS])
    bad_values = [
        "not json {", "[]", json.dumps({**good, "extra": 1}),
        json.dumps({**good, "prompts": {"q": 3}}), json.dumps({**good, "prompts": {"q": "x" * 20_000}}),
        json.dumps({**good, "prompts": {f"p{i}": "" for i in range(100)}, "default_prompt_name": None}),
        json.dumps({**good, "default_prompt_name": "missing"}), json.dumps({**good, "similarity_fn_name": "maxsim"}),
        json.dumps({**good, "truncate_dim": 0}), json.dumps({**good, "truncate_dim": True}),
        json.dumps({**good, "include_prompt": "yes"}), json.dumps({**good, "activation_fn": "relu"}),
        '{"prompts": {"q": "\\ud800"}}',
    ]
    for i, value in enumerate(bad_values):
        path = tmp_path / f"bad{i}.safetensors"
        write_safetensors(path, tensors, {**metadata, fmt.KEY_SENTENCE_TRANSFORMERS: value})
        with pytest.raises(tinybert.ModelFileError, match="sentence_transformers"):
            tinybert.Encoder(path)


def test_bad_prompt_config_is_a_conversion_error(prompted, tmp_path):
    _, _, folder = prompted
    for i, cfg in enumerate([{"prompts": ["a"]}, {"prompts": {"q": 1}}, {"prompts": {}, "default_prompt_name": "x"},
                             {"similarity_fn_name": 3}, {"truncate_dim": -1}]):
        copy = tmp_path / f"hf{i}"
        shutil.copytree(folder, copy)
        (copy / "config_sentence_transformers.json").write_text(json.dumps(cfg))
        with pytest.raises(tinybert.ConversionError, match="config_sentence_transformers.json"):
            convert(copy, tmp_path / f"out{i}.safetensors", dtype="fp32")


def test_include_prompt_false_refuses_prompts(prompted, tmp_path):
    _, _, folder = prompted
    copy = tmp_path / "hf"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "1_Pooling" / "config.json").read_text())
    (copy / "1_Pooling" / "config.json").write_text(json.dumps({**cfg, "include_prompt": False}))
    enc = tinybert.Encoder(convert(copy, tmp_path / "m.safetensors", dtype="fp32"))
    assert enc.encode(["fine"], prompt="").shape == (1, 48)
    with pytest.raises(tinybert.InputError, match="include_prompt"):
        enc.encode(["a default prompt applies"])


# --------------------------------------------------------------------------- CrossEncoder: predict and rank

@pytest.fixture(scope="module")
def cross_encoders(head_model, tmp_path_factory):
    """(labels, activation config) → (tinybert Classifier fp32, sentence-transformers CrossEncoder)."""
    cache: dict = {}

    def get(labels: tuple[str, ...], activation: str | None = None):
        if (labels, activation) not in cache:
            _, files = head_model("bert", "sequence-classification", labels=list(labels), head_scale=2.0)
            folder = files["fp32"].parent / "hf"
            path = files["fp32"]
            if activation is not None:
                root = tmp_path_factory.mktemp("ce")
                shutil.copytree(folder, root / "hf")
                folder = root / "hf"
                cfg = json.loads((folder / "config.json").read_text())
                cfg["sentence_transformers"] = {"activation_fn": activation}
                (folder / "config.json").write_text(json.dumps(cfg))
                path = convert(folder, root / "fp32.safetensors", dtype="fp32")
            cache[labels, activation] = (tinybert.Classifier(path), st.CrossEncoder(str(folder), device="cpu"))
        return cache[labels, activation]

    return get


QUERY = "how do I compare two files"
DOCS = ["Use diff to compare files line by line.", "Bananas are rich in potassium.", "cmp compares two files byte "
        "by byte.", "The weather is nice today.", "Use diff to compare files line by line."]


@pytest.mark.parametrize("activation", [None, "torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh"])
def test_predict_and_rank_match_cross_encoder(cross_encoders, activation):
    clf, ref = cross_encoders(("score",), activation)
    assert clf.activation_fn == {None: "sigmoid", "torch.nn.modules.linear.Identity": "identity",
                                 "torch.nn.modules.activation.Tanh": "tanh"}[activation]
    pairs = [[QUERY, d] for d in DOCS]
    expected = ref.predict(pairs)
    got = clf.predict(pairs)
    assert got.shape == expected.shape == (len(DOCS),) and got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    one = clf.predict(tuple(pairs[1]))
    assert np.ndim(one) == np.ndim(ref.predict(pairs[1])) == 0
    np.testing.assert_allclose(one, ref.predict(pairs[1]), atol=1e-5)
    for kwargs in ({}, {"top_k": 2}, {"return_documents": True}, {"top_k": 3, "return_documents": True}):
        theirs, ours = ref.rank(QUERY, DOCS, **kwargs), clf.rank(QUERY, DOCS, **kwargs)
        assert [set(r) for r in ours] == [set(r) for r in theirs]
        assert [r["corpus_id"] for r in ours] == [r["corpus_id"] for r in theirs]     # ties keep the order
        assert [r.get("text") for r in ours] == [r.get("text") for r in theirs]
        np.testing.assert_allclose([r["score"] for r in ours], [r["score"] for r in theirs], atol=1e-5)
        assert all(isinstance(r["score"], float) and isinstance(r["corpus_id"], int) for r in ours)
    assert clf.rank(QUERY, []) == ref.rank(QUERY, []) == []


def test_multi_label_predict_matches_cross_encoder(cross_encoders):
    clf, ref = cross_encoders(("contradiction", "entailment", "neutral"))
    pairs = [[QUERY, d] for d in DOCS]
    for kwargs in ({}, {"apply_softmax": True}):
        expected, got = ref.predict(pairs, **kwargs), clf.predict(pairs, **kwargs)
        assert got.shape == expected.shape == (len(DOCS), 3) and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError):
        ref.rank(QUERY, DOCS)
    with pytest.raises(tinybert.ModelKindError, match="one-label"):
        clf.rank(QUERY, DOCS)
    with pytest.raises(tinybert.InputError, match="pair"):
        clf.predict([["only one"]])


def test_max_seq_length_is_settable_as_in_sentence_transformers(prompted, texts):
    """Setting max_seq_length truncates as sentence-transformers' setter does; past the position table it is
    refused (sentence-transformers would fail inside the model)."""
    enc, ref, folder = prompted
    try:
        for length in (8, 17, 48):
            enc.max_seq_length = ref.max_seq_length = length
            assert enc.max_seq_length == length
            np.testing.assert_allclose(enc.encode(texts, prompt=""), ref.encode(texts, prompt=""), atol=1e-5)
        limit = enc.config.max_positions - enc.config.position_offset
        enc.max_seq_length = limit
        assert enc.encode(texts[-1:]).shape == (1, 48)
        for bad in (0, limit + 1, 8.0, True, None):
            with pytest.raises(tinybert.InputError, match="max_seq_length"):
                enc.max_seq_length = bad
        assert enc.max_seq_length == limit
    finally:
        enc.max_seq_length = ref.max_seq_length = 48


@pytest.mark.parametrize("model", ["minilm-fp32", "prompted"])
def test_token_embeddings_match_sentence_transformers(model, minilm, minilm_st, prompted, texts):
    """output_value="token_embeddings": each text's tokens' last hidden states, unpadded, in input order (the
    prompted model puts its default prompt's tokens first, as sentence-transformers does)."""
    enc, ref = (minilm["fp32"], minilm_st) if model == "minilm-fp32" else prompted[:2]
    ours = enc.encode(texts, batch_size=5, output_value="token_embeddings")
    theirs = ref.encode(texts, batch_size=5, output_value="token_embeddings")
    assert len(ours) == len(theirs) == len(texts)
    for mine, their in zip(ours, theirs):
        assert mine.dtype == np.float32 and mine.shape == tuple(their.shape)
        np.testing.assert_allclose(mine, their.numpy(), atol=2e-5)
    [one] = enc.encode(texts[0], output_value="token_embeddings")       # a list even for one str
    np.testing.assert_array_equal(one, ours[0])
    assert enc.encode([], output_value="token_embeddings") == []
    with pytest.raises(tinybert.InputError, match="float32"):
        enc.encode(texts[:2], output_value="token_embeddings", precision="int8")
    with pytest.raises(tinybert.InputError, match="output_value"):
        enc.encode(texts[:2], output_value=None)


# --------------------------------------------------------------------------- MPNet and ModernBERT sentence encoders

@pytest.mark.parametrize("family", ["mpnet", "modernbert"])
def test_family_sentence_encoder_matches_sentence_transformers(family, tmp_path, minilm_dir, texts):
    """A random model of the family saved as all-mpnet-base-v2 is (Transformer, mean Pooling, Normalize;
    max_seq_length 40 here, so that the long text is cut), converted fp32 and int8, against the
    SentenceTransformer of the same folder."""
    folder = tmp_path / "hf"
    build_hf_model(family, folder, minilm_dir, seed=5)
    save_as_sentence_transformer(folder, max_seq_length=40)
    ref_model = st.SentenceTransformer(str(folder), device="cpu")
    ref = ref_model.encode(texts)
    assert np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    for dtype in ("fp32", "int8"):
        enc = tinybert.Encoder(convert(folder, tmp_path / f"{dtype}.safetensors", dtype=dtype))
        assert (enc.pooling, enc.max_seq_length) == ({"mode": "mean", "normalize": True}, 40)
        got = enc.encode(texts)
        assert got.shape == ref.shape == (len(texts), 64)
        if dtype == "fp32":
            np.testing.assert_allclose(got, ref, atol=1e-5)
            print(f"{family} sentence embeddings fp32 max abs diff {np.abs(got - ref).max():.2e}")
        else:
            cos = (got * ref).sum(1)
            print(f"{family} sentence embeddings int8 worst cosine {cos.min():.5f}")
            assert cos.min() >= 0.99, cos.min()


# --------------------------------------------------------------------------- Dense modules after pooling

@pytest.fixture(scope="module")
def dense_bert(tmp_path_factory, minilm_dir):
    """A random BERT saved as a sentence-transformers folder with two Dense modules after the mean Pooling (64 →
    96 with bias and Tanh, sentence-transformers' default activation; 96 → 32 without bias, Identity), then
    Normalize; converted fp32 and int8; the SentenceTransformer of the same folder."""
    import torch

    root = tmp_path_factory.mktemp("st_dense")
    folder = root / "hf"
    build_hf_model("bert", folder, minilm_dir, seed=13)
    save_as_sentence_transformer(folder, max_seq_length=48, dense=((96, True, torch.nn.Tanh()),
                                                                   (32, False, torch.nn.Identity())), seed=2)
    files = {dtype: convert(folder, root / f"{dtype}.safetensors", dtype=dtype) for dtype in ("fp32", "int8")}
    return st.SentenceTransformer(str(folder), device="cpu"), files, folder


def test_dense_modules_match_sentence_transformers(dense_bert, texts):
    ref_model, files, _ = dense_bert
    assert [type(m).__name__ for m in ref_model] == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    ref = ref_model.encode(texts)
    enc = tinybert.Encoder(files["fp32"])
    assert enc.dimension == enc.get_sentence_embedding_dimension() == ref_model.get_embedding_dimension() \
        == 32 != enc.config.hidden_size
    got = enc.encode(texts, batch_size=7)
    worst = float(np.abs(got - ref).max())
    print(f"BERT + Dense (Tanh, Identity) fp32: max |embedding - sentence-transformers| {worst:.2e}")
    assert got.shape == ref.shape == (len(texts), 32) and worst <= 1e-5
    # token embeddings are the transformer's, before Pooling and Dense
    assert enc.encode(texts[:2], output_value="token_embeddings")[0].shape[1] == 64
    np.testing.assert_allclose(enc.encode(texts[:6], truncate_dim=16, normalize_embeddings=True),
                               ref_model.encode(texts[:6], truncate_dim=16, normalize_embeddings=True), atol=1e-5)
    # normalize=False leaves out the Normalize module alone: the Dense modules still apply
    unnormalized = st.SentenceTransformer(modules=list(ref_model)[:-1], device="cpu")
    np.testing.assert_allclose(enc.encode(texts[:6], normalize=False), unnormalized.encode(texts[:6]), atol=1e-5)
    int8 = tinybert.Encoder(files["int8"]).encode(texts)
    cos = (int8 * ref).sum(axis=1)
    print(f"BERT + Dense int8: cosine to sentence-transformers fp32 min {cos.min():.5f} mean {cos.mean():.5f}")
    assert cos.min() >= 0.99
    assert enc.encode([]).shape == (0, 32)


def _edited(folder: Path, tmp_path: Path, name: str, edit) -> Path:
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    edit(copy)
    return copy


def _set_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("name, edit, error, match", [
    ("relu", lambda f: _set_json(f / "2_Dense" / "config.json",
                                 activation_function="torch.nn.modules.activation.ReLU"),
     tinybert.UnsupportedModelError, "activation_function"),
    ("custom", lambda f: _set_json(f / "2_Dense" / "config.json", activation_function="my_package.Swish"),
     tinybert.UnsupportedModelError, "activation_function"),
    ("residual", lambda f: _set_json(f / "3_Dense" / "config.json", use_residual=True),
     tinybert.UnsupportedModelError, "use_residual"),
    ("token-level", lambda f: _set_json(f / "2_Dense" / "config.json", module_input_name="token_embeddings"),
     tinybert.UnsupportedModelError, "token_embeddings"),
    ("in-features", lambda f: _set_json(f / "3_Dense" / "config.json", in_features=64),
     tinybert.ConversionError, "in_features 64"),
    ("weight-shape", lambda f: _set_json(f / "3_Dense" / "config.json", out_features=33),
     tinybert.ConversionError, "shape"),
    ("no-config", lambda f: (f / "2_Dense" / "config.json").unlink(), tinybert.ConversionError, "missing"),
    ("after-normalize", lambda f: (f / "modules.json").write_text(json.dumps(
        [m for m in json.loads((f / "modules.json").read_text()) if "Dense" not in m["type"]]
        + [m for m in json.loads((f / "modules.json").read_text()) if "Dense" in m["type"]])),
     tinybert.UnsupportedModelError, "after the Normalize"),
    ("before-pooling", lambda f: (f / "modules.json").write_text(json.dumps(
        [json.loads((f / "modules.json").read_text())[i] for i in (0, 2, 1, 3, 4)])),
     tinybert.UnsupportedModelError, "before the Pooling"),
])
def test_bad_dense_modules_are_refused_at_conversion(dense_bert, tmp_path, name, edit, error, match):
    _, _, folder = dense_bert
    with pytest.raises(error, match=match):
        convert(_edited(folder, tmp_path, name, edit), tmp_path / "out.safetensors", dtype="fp32")


def test_bad_dense_metadata_is_a_model_file_error(dense_bert, tmp_path):
    _, files, _ = dense_bert
    with safe_open(str(files["fp32"]), framework="numpy") as fh:
        tensors, metadata = {n: fh.get_tensor(n) for n in fh.keys()}, dict(fh.metadata())
    good = json.loads(metadata[fmt.KEY_DENSE])
    assert good == [{"in_features": 64, "out_features": 96, "activation": "tanh"},
                    {"in_features": 96, "out_features": 32, "activation": "identity"}]
    bad_values = [
        "not json [", "{}", json.dumps(good * 9),                                    # more than MAX_DENSE layers
        json.dumps([{**good[0], "activation": "relu"}, good[1]]),
        json.dumps([{**good[0], "in_features": 32}, good[1]]),                        # not the hidden size
        json.dumps([good[0], {**good[1], "in_features": 95}]),                        # not the width before it
        json.dumps([{**good[0], "out_features": 0}, good[1]]),
        json.dumps([{**good[0], "extra": 1}, good[1]]),
    ]
    for i, value in enumerate(bad_values):
        path = tmp_path / f"bad{i}.safetensors"
        write_safetensors(path, tensors, {**metadata, fmt.KEY_DENSE: value})
        with pytest.raises(tinybert.ModelFileError, match="dense"):
            tinybert.Encoder(path)
    # the tensors must be the ones the metadata names, with its shapes
    for i, value in enumerate([json.dumps(good[:1]), json.dumps([good[0], {**good[1], "out_features": 31}])]):
        path = tmp_path / f"mismatch{i}.safetensors"
        write_safetensors(path, tensors, {**metadata, fmt.KEY_DENSE: value})
        with pytest.raises(tinybert.ModelFileError, match="dense.1"):
            tinybert.Encoder(path)
    # a file without the key loads without Dense modules (refused: its tensors are unexpected)
    without = {k: v for k, v in metadata.items() if k != fmt.KEY_DENSE}
    write_safetensors(tmp_path / "none.safetensors", tensors, without)
    with pytest.raises(tinybert.ModelFileError, match="unexpected tensors: dense.0"):
        tinybert.Encoder(tmp_path / "none.safetensors")
