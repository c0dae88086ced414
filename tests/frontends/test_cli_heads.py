"""`tinybert classify | ner | fill-mask | qa` as real subprocesses, against transformers on the same weights.

Each command converts a random transformers ``*For*`` checkpoint with `tinybert convert` (fp32) and
its JSON-lines output must equal what transformers' pipeline (QA: its model logits and the span
search written in tests/conftest.py) returns for the same texts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (
    NER_LABELS,
    UNICODE_TEXTS,
    assert_same_entities,
    assert_same_labels,
    hf_pipeline_tokenizer,
    hf_qa,
    reference_spans,
)
from test_cli import assert_cli_error, assert_ok, run

import tinybert


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["TINYBERT_CACHE"] = str(tmp_path_factory.mktemp("tinybert_cache_unused"))
    return env


def converted(env, head_model, tmp_path, family: str, task: str, **kwargs):
    """Convert the checkpoint with the CLI (fp32) and return (transformers model, file)."""
    model, files = head_model(family, task, **kwargs)
    out = tmp_path / f"{family}-{task}.safetensors"
    assert_ok(run(env, "convert", files["fp32"].parent / "hf", out, "--dtype", "fp32", "--quiet"))
    return model, out


def lines(proc) -> list[dict]:
    assert_ok(proc)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_cli_classify(cli_env, head_model, tmp_path, minilm_dir, sentences):
    from transformers import pipeline

    model, path = converted(cli_env, head_model, tmp_path, "bert", "sequence-classification",
                            labels=["negative", "neutral", "positive"])
    pipe = pipeline("text-classification", model=model, tokenizer=hf_pipeline_tokenizer("bert", minilm_dir))
    texts = sentences[:5] + UNICODE_TEXTS[:1]
    out = lines(run(cli_env, "classify", path, *texts, "--top-k", "0"))
    assert [o["text"] for o in out] == texts
    for ref, o in zip(pipe(texts, top_k=None), out):
        assert_same_labels(ref, o["labels"])
    # sentence pairs from stdin, tab-separated
    pairs = [(sentences[10], sentences[11]), (sentences[12], sentences[13])]
    out = lines(run(cli_env, "classify", path, "--pairs", stdin="\n".join(f"{a}\t{b}" for a, b in pairs)))
    for (a, b), o in zip(pairs, out):
        assert (o["text"], o["text_pair"]) == (a, b) and len(o["labels"]) == 1
        ref = pipe({"text": a, "text_pair": b}, top_k=1)
        assert_same_labels(ref, o["labels"])
    assert_cli_error(run(cli_env, "classify", path, "--pairs", "no tab here"), "first<TAB>second")
    # one row per line: a blank line cannot be classified, so it is an error naming the line, not a dropped row
    assert_cli_error(run(cli_env, "classify", path, stdin=f"{texts[0]}\n\n{texts[1]}\n"),
                     "line 2 of standard input", "blank")
    clf = tinybert.Classifier(path, threads=1)
    assert repr(clf) == (f"Classifier(path={str(path)!r}, architecture='bert', quantization='fp32', "
                         f"dim={clf.dimension}, labels=['negative', 'neutral', 'positive'], threads=1)")


def test_cli_rerank(cli_env, head_model, tmp_path, sentences):
    """`tinybert rerank` prints what Classifier.rerank returns, documents from arguments, --file or stdin."""
    _, path = converted(cli_env, head_model, tmp_path, "bert", "sequence-classification", labels=["score"])
    query, docs = sentences[0], sentences[1:8]
    expected = tinybert.Classifier(path).rerank(query, docs)

    def same(got: list[dict], want: list[dict]) -> None:
        assert [(g["index"], g["document"]) for g in got] == [(w["index"], w["document"]) for w in want]
        np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-6)

    same(lines(run(cli_env, "rerank", path, query, *docs)), expected)
    src = tmp_path / "docs.txt"
    src.write_text("\n".join(docs) + "\n", encoding="utf-8")
    same(lines(run(cli_env, "rerank", path, query, "--file", src, "--top-k", "3")), expected[:3])
    same(lines(run(cli_env, "rerank", path, query, stdin="\n".join(docs))), expected)
    assert_cli_error(run(cli_env, "rerank", path, query, stdin=f"{docs[0]}\n \n"), "line 2 of standard input")


def test_cli_ner(cli_env, head_model, tmp_path, minilm_dir, sentences):
    from transformers import pipeline

    model, path = converted(cli_env, head_model, tmp_path, "bert", "token-classification", labels=NER_LABELS)
    texts = sentences[20:24] + UNICODE_TEXTS
    for aggregation in ("simple", "max"):
        pipe = pipeline("token-classification", model=model, tokenizer=hf_pipeline_tokenizer("bert", minilm_dir),
                        aggregation_strategy=aggregation)
        out = lines(run(cli_env, "ner", path, "--aggregation", aggregation, stdin="\n".join(texts)))
        assert [o["text"] for o in out] == texts
        for ref, o in zip(pipe(texts), out):
            assert_same_entities(ref, o["entities"])
    # a blank line has no entities: its row is there, empty, as transformers' pipeline gives for ""
    out = lines(run(cli_env, "ner", path, stdin=f"{texts[0]}\n\n{texts[1]}\n"))
    assert [o["text"] for o in out] == [texts[0], "", texts[1]]
    assert out[1]["entities"] == [] == pipe("")
    ner = tinybert.TokenClassifier(path, threads=1)
    assert repr(ner).startswith(f"TokenClassifier(path={str(path)!r}, architecture='bert', quantization='fp32'")


def test_cli_fill_mask(cli_env, head_model, tmp_path, minilm_dir):
    from transformers import pipeline

    model, path = converted(cli_env, head_model, tmp_path, "bert", "masked-lm")
    pipe = pipeline("fill-mask", model=model, tokenizer=hf_pipeline_tokenizer("bert", minilm_dir))
    texts = ["The [MASK] compares two files.", "Café [MASK] in 東京 😀."]
    out = lines(run(cli_env, "fill-mask", path, *texts, "--top-k", "3"))
    for ref, o in zip(pipe(texts, top_k=3), out):
        assert [(r["token"], r["token_str"], r["sequence"]) for r in ref] == \
            [(p["token"], p["token_str"], p["sequence"]) for p in o["predictions"]]
        assert np.allclose([r["score"] for r in ref], [p["score"] for p in o["predictions"]], atol=1e-4)
    assert_cli_error(run(cli_env, "fill-mask", path, "no mask here"), "mask token")
    assert_cli_error(run(cli_env, "fill-mask", path, stdin=f"{texts[0]}\nno mask here\n"),
                     "line 2 of standard input", "mask token")
    assert repr(tinybert.FillMask(path, threads=1)) == (
        f"FillMask(path={str(path)!r}, architecture='bert', quantization='fp32', dim={model.config.hidden_size}, "
        "threads=1)")


def test_cli_qa(cli_env, head_model, tmp_path, minilm_dir, sentences):
    model, path = converted(cli_env, head_model, tmp_path, "bert", "question-answering")
    context = " ".join(sentences[30:34])
    questions = ["What does the option do?", "Which file is compared?"]
    ctx_file = tmp_path / "context.txt"
    ctx_file.write_text(context, encoding="utf-8")
    out = lines(run(cli_env, "qa", path, *questions, "--context-file", ctx_file))
    tok = hf_pipeline_tokenizer("bert", minilm_dir)
    for question, o in zip(questions, out):
        enc, _, start, end = hf_qa(model, tok, question, context, 192, 96)
        mask = np.array([s == 1 for s in enc.sequence_ids(0)])
        score, s, e = max(reference_spans(start[0], end[0], mask, 30))
        offsets = enc["offset_mapping"][0].numpy()
        assert o["question"] == question
        assert (o["answer"]["start"], o["answer"]["end"]) == (int(offsets[s][0]), int(offsets[e][1]))
        assert o["answer"]["answer"] == context[o["answer"]["start"]:o["answer"]["end"]]
        assert abs(o["answer"]["score"] - score) <= 1e-4
    assert_cli_error(run(cli_env, "qa", path, "Why?"), "--context")
    assert_cli_error(run(cli_env, "classify", path, "some text"), "question-answering", "use `tinybert qa`")
    assert repr(tinybert.QuestionAnswerer(path, threads=1)).startswith("QuestionAnswerer(path=")
