"""Task heads of Hugging Face ``*For*`` checkpoints → canonical ``head.*`` tensors + a TaskConfig.

Families name their heads differently but build them from the same three parts: a first-token
dense layer with an activation (the "pooler"), a final projection (the "classifier"), and a
masked-LM transform + decoder. The tables below say where each family keeps those parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tinybert.config import MAX_LABELS, EncoderConfig, TaskConfig
from tinybert.errors import ConversionError, ModelFileError, UnsupportedModelError
from tinybert.format import TASKS

from .architectures import FAMILIES, HF_ACTIVATIONS, hf_activation
from .hfconfig import integer, string, strings


@dataclass(frozen=True)
class HeadNames:
    """Where one family keeps its head weights (names relative to the checkpoint root; ``{base}``
    stands for the base-model prefix such as ``bert.``)."""

    seq_pooler: str | None          # dense before the sequence classifier
    seq_pooler_activation: str | None   # None: config.json's pooler_hidden_act (DeBERTa's ContextPooler)
    seq_classifier: str
    token_classifier: str
    qa: str
    mlm_dense: str
    mlm_norm: str
    mlm_decoder: str
    mlm_bias: str
    mlm_activation: str | None      # None: the encoder's own hidden activation
    mlm_width: str                  # "hidden" or "embedding" (ELECTRA's generator head)
    mlm_norm_eps: float | None      # None: the encoder's norm_eps
    mlm_always_tied: bool = False   # the decoder is the token table whatever tie_word_embeddings says
    # ModernBERT's prediction head (dense → act → LayerNorm) before every classifier and the MLM decoder:
    pooler_norm: str | None = None        # the LayerNorm after the pooler
    token_pooler: bool = False            # token classification and QA run the pooler on every token
    activation_key: str | None = None     # config.json key of the pooler and MLM activation (default gelu)


_ROBERTA = HeadNames(
    seq_pooler="classifier.dense", seq_pooler_activation="tanh", seq_classifier="classifier.out_proj",
    token_classifier="classifier", qa="qa_outputs",
    mlm_dense="lm_head.dense", mlm_norm="lm_head.layer_norm", mlm_decoder="lm_head.decoder",
    mlm_bias="lm_head.bias", mlm_activation="gelu", mlm_width="hidden", mlm_norm_eps=None)

HEADS = {
    "bert": HeadNames(
        seq_pooler="{base}pooler.dense", seq_pooler_activation="tanh", seq_classifier="classifier",
        token_classifier="classifier", qa="qa_outputs",
        mlm_dense="cls.predictions.transform.dense", mlm_norm="cls.predictions.transform.LayerNorm",
        mlm_decoder="cls.predictions.decoder", mlm_bias="cls.predictions.bias", mlm_activation=None,
        mlm_width="hidden", mlm_norm_eps=None),
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "distilbert": HeadNames(
        seq_pooler="pre_classifier", seq_pooler_activation="relu", seq_classifier="classifier",
        token_classifier="classifier", qa="qa_outputs",
        mlm_dense="vocab_transform", mlm_norm="vocab_layer_norm", mlm_decoder="vocab_projector",
        mlm_bias="vocab_projector.bias", mlm_activation=None, mlm_width="hidden", mlm_norm_eps=1e-12),
    "electra": HeadNames(
        seq_pooler="classifier.dense", seq_pooler_activation="gelu", seq_classifier="classifier.out_proj",
        token_classifier="classifier", qa="qa_outputs",
        mlm_dense="generator_predictions.dense", mlm_norm="generator_predictions.LayerNorm",
        mlm_decoder="generator_lm_head", mlm_bias="generator_lm_head.bias", mlm_activation="gelu",
        mlm_width="embedding", mlm_norm_eps=None),
    # DeBERTa-v2/v3 with legacy=True (transformers' default): a BERT-style cls.predictions head.
    "deberta-v2": HeadNames(
        seq_pooler="pooler.dense", seq_pooler_activation=None, seq_classifier="classifier",
        token_classifier="classifier", qa="qa_outputs",
        mlm_dense="cls.predictions.transform.dense", mlm_norm="cls.predictions.transform.LayerNorm",
        mlm_decoder="cls.predictions.decoder", mlm_bias="cls.predictions.bias", mlm_activation=None,
        mlm_width="hidden", mlm_norm_eps=None),
    "mpnet": _ROBERTA,
    "modernbert": HeadNames(
        seq_pooler="head.dense", seq_pooler_activation=None, seq_classifier="classifier",
        token_classifier="classifier", qa="classifier", mlm_dense="head.dense", mlm_norm="head.norm",
        mlm_decoder="decoder", mlm_bias="decoder.bias", mlm_activation=None, mlm_width="hidden", mlm_norm_eps=None,
        pooler_norm="head.norm", token_pooler=True, activation_key="classifier_activation"),
}
# DeBERTa-v2/v3 with legacy=False: lm_predictions.lm_head, always multiplied by the token table.
_DEBERTA_LM_PREDICTIONS = HeadNames(
    seq_pooler="pooler.dense", seq_pooler_activation=None, seq_classifier="classifier",
    token_classifier="classifier", qa="qa_outputs",
    mlm_dense="lm_predictions.lm_head.dense", mlm_norm="lm_predictions.lm_head.LayerNorm",
    mlm_decoder="lm_predictions.lm_head.decoder", mlm_bias="lm_predictions.lm_head.bias", mlm_activation=None,
    mlm_width="hidden", mlm_norm_eps=None, mlm_always_tied=True)


def _head_names(hf: dict, architecture: str) -> HeadNames:
    if architecture == "deberta-v2" and hf.get("legacy", True) is False:
        return _DEBERTA_LM_PREDICTIONS
    return HEADS[architecture]


def _pooler_activation(hf: dict, names: HeadNames) -> str:
    """The pooler's activation: the family's, or config.json's pooler_hidden_act (DeBERTa, default gelu)."""
    if names.seq_pooler_activation is not None:
        return names.seq_pooler_activation
    if hf.get("pooler_hidden_size", hf.get("hidden_size")) != hf.get("hidden_size"):
        raise UnsupportedModelError("a pooler_hidden_size other than hidden_size is not supported")
    return hf_activation({"hidden_act": hf.get("pooler_hidden_act", "gelu")})

# transformers class-name suffix → task
_SUFFIXES = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "masked-lm",
    "ForPreTraining": "pretraining",
}


def detect_task(hf: dict) -> str:
    """The task of a checkpoint from config.json ``architectures``; feature-extraction (the encoder
    alone) for base models and for heads tinybert does not run (multiple choice, ELECTRA's
    discriminator)."""
    for arch in strings(hf, "architectures"):
        for suffix, task in _SUFFIXES.items():
            if arch.endswith(suffix):
                # ELECTRA's ForPreTraining is the replaced-token discriminator, not BERT's MLM + NSP:
                # its encoder converts, its head is not one tinybert runs.
                if task == "pretraining" and arch != "BertForPreTraining":
                    return "feature-extraction"
                return task
    return "feature-extraction"


def _labels(hf: dict, task: str) -> tuple[str, ...]:
    id2label = hf.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            keyed = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError):
            raise ConversionError("config.json id2label keys are not integers") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise ConversionError("config.json id2label keys are not 0..N-1")
        return tuple(keyed[i] for i in range(len(keyed)))
    num_labels = integer(hf, "num_labels", default=None, minimum=1)
    if num_labels is not None:
        if num_labels > MAX_LABELS:      # refused before building the names
            raise ConversionError(f"config.json num_labels {num_labels} is above {MAX_LABELS}")
        return tuple(f"LABEL_{i}" for i in range(num_labels))
    raise ConversionError(f"a {task} checkpoint needs id2label or num_labels in config.json")


def canonical_head(hf: dict, cfg: EncoderConfig, tensors: dict[str, np.ndarray], base_prefix: str,
                   task: str | None = None) -> tuple[TaskConfig, dict[str, np.ndarray]]:
    """The task config and the ``head.*`` tensors of a checkpoint (none for feature-extraction)."""
    task = task or detect_task(hf)
    if task not in TASKS:
        raise ConversionError(f"task must be one of {TASKS}, got {task!r}")
    if task == "feature-extraction":
        return TaskConfig(), {}
    if task == "pretraining" and cfg.architecture != "bert":
        raise UnsupportedModelError(f"pretraining heads are converted for BERT only, not {cfg.architecture}")
    names = _head_names(hf, cfg.architecture)
    optional_biases = FAMILIES[cfg.architecture].optional_biases
    head_act = None
    if names.activation_key:
        head_act = HF_ACTIVATIONS.get(string(hf, names.activation_key, default="gelu"))
        if head_act is None:
            raise UnsupportedModelError(f"config.json {names.activation_key} {hf[names.activation_key]!r} is not "
                                        f"one of {sorted(HF_ACTIVATIONS)}")

    def take(name: str, like: np.ndarray | None = None) -> np.ndarray:
        full = name.format(base=base_prefix)
        if full not in tensors:
            if like is not None and optional_biases:    # a projection or norm without a bias
                return np.zeros(like.shape[0], dtype=np.float32)
            raise ConversionError(f"a {task} checkpoint needs the tensor {full}, which is missing")
        return np.ascontiguousarray(tensors[full], dtype=np.float32)

    def linear(dst: str, src: str) -> None:
        out[dst + ".weight"] = take(src + ".weight")
        out[dst + ".bias"] = take(src + ".bias", like=out[dst + ".weight"])

    def pooler() -> None:
        linear("head.pooler", names.seq_pooler)
        # ModernBERT names its activation's key; others have their own, or config.json's pooler_hidden_act
        fields["pooler_activation"] = head_act if names.activation_key else _pooler_activation(hf, names)
        if names.pooler_norm:
            linear("head.pooler_norm", names.pooler_norm)
            fields["pooler_norm_eps"] = cfg.norm_eps

    out: dict[str, np.ndarray] = {}
    fields: dict = {"type": task}
    if task == "sequence-classification":
        fields["labels"] = _labels(hf, task)
        fields["problem_type"] = hf.get("problem_type")
        if names.seq_pooler is not None:
            pooler()
        if names.token_pooler and hf.get("classifier_pooling") == "mean":
            fields["pooling"] = "mean"
        linear("head.classifier", names.seq_classifier)
    elif task == "token-classification":
        fields["labels"] = _labels(hf, task)
        if names.token_pooler:
            pooler()
        linear("head.classifier", names.token_classifier)
    elif task == "question-answering":
        if names.token_pooler:
            pooler()
        linear("head.classifier", names.qa)
        if out["head.classifier.weight"].shape[0] != 2:
            raise UnsupportedModelError("question answering needs exactly 2 outputs (start, end)")
    else:  # masked-lm, pretraining
        act = names.mlm_activation or head_act or hf_activation(hf)
        width = cfg.hidden_size if names.mlm_width == "hidden" else cfg.embedding_size
        tied = names.mlm_always_tied or bool(hf.get("tie_word_embeddings", True))
        fields.update(mlm_size=width, mlm_activation=act, mlm_tied=tied,
                      mlm_norm_eps=float(names.mlm_norm_eps or cfg.norm_eps))
        linear("head.mlm.dense", names.mlm_dense)
        linear("head.mlm.norm", names.mlm_norm)
        if optional_biases and names.mlm_bias not in tensors:
            out["head.mlm.decoder.bias"] = np.zeros(cfg.vocab_size, dtype=np.float32)
        else:
            out["head.mlm.decoder.bias"] = _first(take, names.mlm_bias, names.mlm_decoder + ".bias")
        if not tied:
            out["head.mlm.decoder.weight"] = take(names.mlm_decoder + ".weight")
        elif width != cfg.embedding_size:
            raise UnsupportedModelError("a tied MLM decoder must have the embedding width")
        if task == "pretraining":
            linear("head.pooler", names.seq_pooler)
            fields["pooler_activation"] = names.seq_pooler_activation
            linear("head.nsp", "cls.seq_relationship")
    try:
        config = TaskConfig(**fields)
        config.validate()
    except ModelFileError as exc:
        raise ConversionError(f"config.json: {exc}") from None
    return config, out


def _first(take: Callable[[str], np.ndarray], *names: str) -> np.ndarray:
    for name in names[:-1]:
        try:
            return take(name)
        except ConversionError:
            continue
    return take(names[-1])
