"""Text-classification benchmark: tinybert's ``Classifier`` and its peers on the real corpus, one run.

    python -m bench.heads [--quick] [--smoke] [--rounds N] [--threads 2] [--engines ...] [--out FILE]

What is measured: the time to classify all 1,000 shared sentences (../shared/data/sentences.txt) with
batch 32, per engine, in its own fresh process (so peak RSS is its own), same texts, same threads.
The model is all-MiniLM-L6-v2's encoder (real weights) under a 3-label ``BertForSequenceClassification``
head (labels negative/neutral/positive, newly initialised classifier, fixed torch seed), so the
encoder cost is the real MiniLM's; the head's numbers mean nothing, only its cost and fidelity do.

How: the timed region of every engine is text in, labels out: tokenization, forward, softmax and the
top-1 label with its score, like tinybert's ``classify(texts, top_k=1, batch_size=32)``.
tinybert sorts the texts by token length internally (longest first); the peers get their batches
cut in that same order (pre-sorted outside the timed region) so that nobody pays for extra padding.
Peers tokenize with transformers' fast tokenizer, padding to the longest text of each batch and
truncating at 256 tokens (MiniLM's max_seq_length, which tinybert uses too). Figures are medians
over repeats with the warm-up excluded. Also reported: for tinybert, the cost of the head, i.e.
``classify`` vs ``encode`` on the same file and corpus ((classify - encode) / encode) and the head
alone timed on precomputed hidden states; and the fidelity of each engine: top-label agreement with
PyTorch fp32 on the 1,000 sentences. ``--quick`` is a smoke run: the first 400 sentences, a one-batch
warm-up and a single timed pass (a full pass over the corpus takes 10-16 s per engine on this machine);
``--smoke`` the same on 64 sentences (results in bench/results/scratch/).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import harness
from bench.encoder import hf_folder
from bench.harness import CACHE

ENGINES = ["tinybert-int8", "tinybert-fp32", "onnxruntime-int8", "onnxruntime-fp32", "pytorch-int8", "pytorch-fp32"]
REFERENCE = "pytorch-fp32"
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
SEED = 0
BATCH = 32
REPEATS = 5
# --quick times the first QUICK_SENTENCES sentences of the file: on this machine one pass over all 1,000
# takes 10-16 s per engine, so even a single timed pass each would not fit in two minutes.
QUICK_SENTENCES = 400
SMOKE_SENTENCES = 64
HF_CLS = CACHE / "minilm-cls"
# Built engine files live apart from the HF folder: the converter and from_pretrained read every
# *.safetensors / config file they find there.
BUILT = CACHE / "minilm-cls-engines"
# sentence_bert_config.json carries max_seq_length = 256, which tinybert's converter reads.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "sentence_bert_config.json")
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ----------------------------------------------------------------------------- preparation (parent)

def cls_folder() -> Path:
    """The HF sequence-classification folder (built once, cached): MiniLM's encoder + a seeded 3-label head."""
    def build(folder: Path) -> None:
        import torch
        from transformers import BertForSequenceClassification

        src = hf_folder("minilm")
        torch.manual_seed(SEED)  # the new head's weights come from torch's RNG
        model, info = BertForSequenceClassification.from_pretrained(
            str(src), num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
            output_loading_info=True)
        model.eval().save_pretrained(folder)
        for name in TOKENIZER_FILES:
            shutil.copy(src / name, folder / name)
        BUILT.mkdir(parents=True, exist_ok=True)
        (BUILT / "newly_initialised.json").write_text(json.dumps(sorted(info.get("missing_keys", []))))
    return harness.built_once(HF_CLS, build, lambda f: (f / "model.safetensors").is_file()
                              and (f / "tokenizer.json").is_file())


def max_length(folder: Path) -> int:
    return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])


def prepare(engine: str) -> Path:
    """Build (once, cached) what ``engine`` loads; returns its path."""
    folder = cls_folder()
    kind, precision = harness.kind_precision(engine)
    if kind == "tinybert":
        return harness.tinybert_file(folder, BUILT / f"tinybert-{precision}.safetensors", precision,
                                     task="sequence-classification")
    if kind == "onnxruntime":
        return harness.onnx_model(BUILT, precision, lambda target: _export_onnx(folder, target))
    return folder  # PyTorch loads the HF folder directly


def _export_onnx(folder: Path, target: Path) -> None:
    import torch
    from transformers import BertForSequenceClassification

    class Logits(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    ids = torch.ones((2, 8), dtype=torch.long)
    dynamic = {name: {0: "b", 1: "s"} for name in ONNX_INPUTS}
    dynamic["logits"] = {0: "b"}
    harness.export_onnx(Logits(BertForSequenceClassification.from_pretrained(str(folder)).eval()),
                        (ids, torch.ones_like(ids), torch.zeros_like(ids)), target, list(ONNX_INPUTS), ["logits"],
                        dynamic)


def length_order(texts: list[str], folder: Path, max_len: int) -> list[int]:
    """The order tinybert's scheduler (``Scheduler.map``) processes texts in: token count, longest first, stable."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()  # MiniLM's tokenizer.json pads to 128 and truncates at 128; tinybert does neither
    tok.enable_truncation(max_length=max_len)
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    return sorted(range(len(texts)), key=lambda i: -lengths[i])


# ----------------------------------------------------------------------------- engines (worker)

def _softmax(x: np.ndarray) -> np.ndarray:
    # float64, as tinybert.api.tasks.softmax: every engine does the same post-processing work
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _timed(fn: Callable[[], object], warm: Callable[[], object], repeats: int, quick: bool) -> float:
    """Median seconds of ``fn`` over ``repeats`` after a warm-up pass (excluded). ``quick``: the warm-up is
    one batch (loads kernels, sizes the allocators) and a single timed pass follows, which halves the run."""
    if not quick:
        return harness.median_time(fn, repeats=repeats)
    warm()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _interleaved(a: Callable[[], object], b: Callable[[], object], warm_a: Callable[[], object],
                 warm_b: Callable[[], object], repeats: int, quick: bool) -> tuple[list[float], list[float]]:
    """Seconds of ``a`` and ``b`` timed in alternation, warm-ups excluded (as ``_timed``: a whole pass
    each, or one batch with ``quick``). Two back-to-back blocks of repeats would fold the machine's
    drift into the difference a - b, which is what the head overhead is; alternating, and swapping
    which goes first every round, spreads it over both."""
    if quick:
        warm_a()
        warm_b()
    else:
        a()
        b()
    times_a: list[float] = []
    times_b: list[float] = []
    for r in range(1 if quick else repeats):
        pair = ((a, times_a), (b, times_b))
        for fn, times in (pair if r % 2 == 0 else pair[::-1]):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times_a, times_b


def _tinybert(spec: dict) -> dict:
    import tinybert
    from tinybert.api.tasks import softmax

    t0 = time.perf_counter()
    clf = tinybert.Classifier(spec["path"], threads=spec["threads"])
    load_s = time.perf_counter() - t0
    texts, order, quick = spec["texts"], spec["order"], spec["quick"]
    if clf.config.max_length != spec["max_length"]:
        raise SystemExit(f"tinybert truncates at {clf.config.max_length}, the peers at {spec['max_length']}")
    lengths = [len(e.ids) for e in clf.tokenizer.encode_batch(texts)]
    order_matches = sorted(range(len(texts)), key=lambda i: -lengths[i]) == order
    warm_texts = [texts[i] for i in order[:BATCH]]
    last: dict = {}

    def classify() -> None:
        last["out"] = clf.classify(texts, top_k=1, batch_size=BATCH)

    # The encoder-only baseline: Encoder.encode on the very same object (Classifier is an Encoder), so it
    # runs the same weights and the same tokenizer + packed batches, with mean pooling in place of the head,
    # and adds no second copy of the model to this process's RSS.
    def encode() -> None:
        clf.encode(texts, batch_size=BATCH)

    classify_t, encode_t = _interleaved(classify, encode, lambda: clf.classify(warm_texts, batch_size=BATCH),
                                        lambda: clf.encode(warm_texts, batch_size=BATCH), spec["repeats"], quick)
    classify_s, encode_s = float(np.median(classify_t)), float(np.median(encode_t))
    # Per round, so that a slow stretch of the machine hits both terms of the difference alike.
    overhead = float(np.median([(c - e) / e for c, e in zip(classify_t, encode_t)]))
    peak = harness.peak_rss_mb()  # before the head-alone check below, which holds every batch's hidden states

    # The head alone (pooler + classifier + softmax) on precomputed hidden states: a direct figure, since
    # classify - encode is a small difference of two noisy numbers.
    hidden = [(batch.starts, h) for _, batch, h in clf.runner.batches(clf.tokenizer.encode_batch(texts), BATCH)]

    def head() -> None:
        for starts, h in hidden:
            softmax(clf.runner.head.sequence_logits(h, starts))
    head_s = harness.median_time(head, repeats=1 if spec["smoke"] else 5 if quick else 20)
    index = {name: i for i, name in LABELS.items()}
    out = last["out"]
    return {"load_s": load_s, "median_s": classify_s, "encode_s": encode_s, "head_alone_s": head_s,
            "head_overhead_pct": 100 * overhead, "order_matches": order_matches,
            "peak_rss_mb": peak, "labels": [index[r[0]["label"]] for r in out], "scores": [r[0]["score"] for r in out]}


def _peer(spec: dict) -> dict:
    kind, precision = spec["engine"].rsplit("-", 1)
    threads, folder = spec["threads"], spec["folder"]
    t0 = time.perf_counter()
    # BertTokenizer is transformers' fast (tokenizers-backed) tokenizer; AutoTokenizer would import torch,
    # adding ~150 MB to the ONNX Runtime processes' RSS for nothing.
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(folder)
    if kind == "onnxruntime":
        sess = harness.ort_session(spec["path"], threads)

        def forward(batch: list[str]) -> np.ndarray:
            enc = tok(batch, padding=True, truncation=True, max_length=spec["max_length"], return_tensors="np")
            return sess.run(["logits"], {name: enc[name] for name in ONNX_INPUTS})[0]
    else:
        import torch
        from transformers import BertForSequenceClassification

        model = harness.torch_model(lambda: BertForSequenceClassification.from_pretrained(folder), precision, threads)

        def forward(batch: list[str]) -> np.ndarray:
            enc = tok(batch, padding=True, truncation=True, max_length=spec["max_length"], return_tensors="pt")
            with torch.inference_mode():
                return model(**enc).logits.numpy()
    load_s = time.perf_counter() - t0
    texts, order = spec["texts"], spec["order"]
    rows = [order[s:s + BATCH] for s in range(0, len(order), BATCH)]
    batches = [[texts[i] for i in r] for r in rows]  # cut outside the timed region, as tinybert's input is a list
    last: dict = {}

    def classify() -> None:
        # Same output as classify(top_k=1): [{"label", "score"}] per text, in input order.
        results: list = [None] * len(texts)
        probs = np.empty((len(texts), len(LABELS)))
        for r, batch in zip(rows, batches):
            p = _softmax(forward(batch))
            best = p.argmax(axis=1)  # first maximum, as tinybert's stable argsort
            for i, row, b in zip(r, p, best):
                results[i] = [{"label": LABELS[int(b)], "score": float(row[b])}]
            probs[r] = p
        last["out"], last["probs"] = results, probs

    median_s = _timed(classify, lambda: forward(batches[0]), spec["repeats"], spec["quick"])
    index = {name: i for i, name in LABELS.items()}
    out = last["out"]
    return {"load_s": load_s, "median_s": median_s, "peak_rss_mb": harness.peak_rss_mb(),
            "labels": [index[r[0]["label"]] for r in out], "scores": [r[0]["score"] for r in out],
            "probs": last["probs"].tolist()}


def worker(spec: dict) -> dict:
    return _tinybert(spec) if spec["engine"].startswith("tinybert") else _peer(spec)


# ----------------------------------------------------------------------------- analysis (parent)

def fidelity(results: dict) -> dict:
    """Top-label agreement with the reference, and |score - reference probability of that label|."""
    ref = results.get(REFERENCE, {}).get("probs")
    if ref is None:
        return {}
    ref = np.array(ref)
    ref_labels = ref.argmax(axis=1)
    for res in results.values():
        if "labels" not in res:
            continue
        labels = np.array(res["labels"])
        res["agreement"] = float((labels == ref_labels).mean())
        res["mean_abs_dscore"] = float(np.abs(np.array(res["scores"]) - ref[np.arange(len(ref)), labels]).mean())
    top2 = np.sort(ref, axis=1)[:, -2:]
    return {"reference": REFERENCE,
            "reference_label_counts": {LABELS[i]: int((ref_labels == i).sum()) for i in LABELS},
            "reference_median_margin": float(np.median(top2[:, 1] - top2[:, 0]))}


def ratios(results: dict) -> None:
    """tinybert's speed over the fastest peer of each precision (>1: tinybert is faster)."""
    for engine, res in results.items():
        if not engine.startswith("tinybert") or "median_s" not in res:
            continue
        for precision in ("int8", "fp32"):
            peers = [(e, r["sentences_per_s"]) for e, r in results.items()
                     if not e.startswith("tinybert") and e.endswith(precision) and "sentences_per_s" in r]
            if peers:
                best, speed = max(peers, key=lambda p: p[1])
                res[f"vs_best_{precision}_peer"] = {"peer": best, "ratio": res["sentences_per_s"] / speed}


def print_report(report: dict) -> None:
    results = report["engines"]
    n = report["sentences"]
    quick = " (quick: one-batch warm-up, 1 timed pass; noisy, not figures to quote)" if report["quick"] else ""
    print(f"\nclassification of {n} sentences, batch {BATCH}, {report['threads']} threads, "
          f"median of {report['repeats']} timed passes{quick}")
    print("timed: tokenization + forward + softmax + top-1 label; peers get tinybert's length-sorted batches")
    print(f"{'engine':18}{'median s':>10}{'sent/s':>9}  {'vs best int8 peer':<24}{'vs best fp32 peer':<24}"
          f"{'load s':>7}{'MB':>7}{'RSS MB':>8}{'agree':>8}{'|dp|':>8}")
    for engine, res in results.items():
        if "error" in res:
            print(f"{engine:18} error: {res['error']}")
            continue
        cells = []
        for precision in ("int8", "fp32"):
            vs = res.get(f"vs_best_{precision}_peer")
            cells.append(f"{vs['ratio']:.2f}x {vs['peer']}" if vs else "")
        print(f"{engine:18}{res['median_s']:>10.2f}{res['sentences_per_s']:>9.1f}  {cells[0]:<24}{cells[1]:<24}"
              f"{res['load_s']:>7.2f}{res['file_mb']:>7.1f}{res['peak_rss_mb']:>8.0f}"
              f"{100 * res.get('agreement', float('nan')):>7.1f}%{res.get('mean_abs_dscore', float('nan')):>8.4f}")
    fid = report.get("fidelity") or {}
    if fid:
        print(f"agree = top label equal to {fid['reference']}'s; |dp| = mean |score - {fid['reference']}'s "
              f"probability of that label|; reference labels {fid['reference_label_counts']}, "
              f"median top-1/top-2 margin {fid['reference_median_margin']:.4f}")
    for engine, res in results.items():
        if "encode_s" in res:
            print(f"head cost, {engine}: classify {res['median_s']:.2f} s vs encode {res['encode_s']:.2f} s -> "
                  f"overhead {res['head_overhead_pct']:+.1f}% (median over alternating rounds); head alone "
                  f"(pooler + classifier + softmax, {n} texts) {res['head_alone_s'] * 1e3:.1f} ms = "
                  f"{100 * res['head_alone_s'] / res['encode_s']:.2f}% of encode")
            if not res["order_matches"]:
                print("  WARNING: tinybert's own length order differs from the one the peers were given")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"the first {QUICK_SENTENCES} sentences, a one-batch warm-up and a single timed pass "
                             "per engine: a smoke run, not figures to quote")
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args(argv)
    if args.worker:
        harness.serve(args.worker, worker)
        return
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; choose from {ENGINES}")
    session = harness.Session("heads", args)
    texts = harness.sentences()
    if args.smoke or args.quick:
        texts = texts[:SMOKE_SENTENCES if args.smoke else QUICK_SENTENCES]
    print("preparing (cached after the first run)", flush=True)
    folder = cls_folder()
    max_len = max_length(folder)
    paths = {engine: prepare(engine) for engine in engines}
    new = BUILT / "newly_initialised.json"
    common = {"texts": texts, "order": length_order(texts, folder, max_len), "max_length": max_len,
              "folder": str(folder), "repeats": REPEATS}
    results = session.rounds(engines, {engine: dict(common, path=str(paths[engine])) for engine in engines})
    for engine, res in results.items():
        if "error" not in res:
            path = paths[engine]
            res["file_mb"] = harness.file_size(path / "model.safetensors" if path.is_dir() else path) / 1e6
            res["sentences_per_s"] = len(texts) / res["median_s"]
    report = {"sentences": len(texts), "batch_size": BATCH, "max_length": max_len,
              "repeats": 1 if args.quick else REPEATS, "peers_get_length_sorted_batches": True, "seed": SEED,
              "labels": LABELS, "newly_initialised": json.loads(new.read_text()) if new.is_file() else None,
              "engines": results}
    report["fidelity"] = fidelity(results)
    ratios(results)
    for res in results.values():
        for key in ("probs", "labels", "scores"):  # per-text arrays: used above, too long for the report
            res.pop(key, None)
    print_report(dict(report, threads=args.threads, quick=args.quick))
    session.write(report)


if __name__ == "__main__":
    main()
