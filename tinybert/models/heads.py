"""Task heads on top of the last hidden state (packed [T, H]; sequence b is rows starts[b]:starts[b+1]).

Every family's head is built from the same parts, with the differences as data (TaskConfig):
    pooler      h_first → act(W h_first + b)         (BERT tanh pooler, RoBERTa/ELECTRA head dense, DistilBERT)
                (→ LayerNorm; on the mean of the tokens, or on every token: ModernBERT's prediction head)
    classifier  W x + b                              (sequence / token classification, QA start-end logits)
    masked LM   LayerNorm(act(W h + b)) → decoder    (decoder tied to the token embeddings or not)
    NSP         W pooled + b                         (BERT pretraining)

and sentence-transformers' Dense modules, which take the pooled sentence vector: act(W x + b), one after another.
"""

from __future__ import annotations

import numpy as np

from .. import format as fmt
from ..config import EncoderConfig, TaskConfig
from ..errors import InputError, check_finite
from ..kernels.activations import ACTIVATIONS
from ..kernels.pooling import segment_sum
from ..layers import Linear, Norm


def pool_segments(hidden: np.ndarray, starts: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from packed hidden states [T, H] (sequence b = rows starts[b]:starts[b+1],
    all real tokens), pooled as sentence-transformers pools: mean of the tokens; mean_sqrt_len =
    sum / sqrt(count); cls = first token; lasttoken = last token (decoder embedders); max = element-wise max."""
    if (starts.ndim != 1 or starts.size < 2 or starts[0] < 0 or starts[-1] > hidden.shape[0]
            or np.any(np.diff(starts) < 1)):
        raise InputError(f"starts must rise from 0 to at most {hidden.shape[0]} with no empty sequence")
    first = starts[:-1]
    if mode == "cls":
        return np.ascontiguousarray(hidden[first])
    if mode == "lasttoken":
        return np.ascontiguousarray(hidden[starts[1:] - 1])
    if mode == "max":
        return np.maximum.reduceat(hidden, first, axis=0)
    summed = np.empty((first.size, hidden.shape[1]), dtype=np.float64)
    segment_sum(np.ascontiguousarray(hidden, dtype=np.float32), np.ascontiguousarray(starts, dtype=np.int64), summed)
    count = np.diff(starts).astype(np.float64)[:, None]
    if mode == "mean":
        return (summed / count).astype(np.float32)
    if mode == "mean_sqrt_len":
        return (summed / np.sqrt(count)).astype(np.float32)
    raise ValueError(f"unknown pooling mode {mode!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


class DenseModules:
    """sentence-transformers' Dense modules on pooled vectors [B, in] → [B, out]: x = act(W x + b) for each, in
    the order of the checkpoint's modules.json (``layers``: the file's checked ``dense`` list); float32 weights,
    tinybert's own fp32 GEMM."""

    def __init__(self, layers: list[dict], tensors: dict[str, np.ndarray]) -> None:
        self.layers = [(Linear(tensors, fmt.dense_prefix(i)), layer["activation"]) for i, layer in enumerate(layers)]

    def out_features(self, width: int) -> int:
        """The width of the vectors they return for pooled vectors of ``width`` values."""
        return self.layers[-1][0].out_features if self.layers else width

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for linear, activation in self.layers:
            x = linear(np.ascontiguousarray(x, dtype=np.float32))
            if activation == "tanh":
                np.tanh(x, out=x)
        check_finite(x, "Dense module outputs")
        return x


def _finite(logits: np.ndarray) -> np.ndarray:
    check_finite(logits, "head logits")
    return logits


def _activate(x: np.ndarray, name: str) -> np.ndarray:
    if name == "tanh":
        return np.tanh(x, out=x)
    ACTIVATIONS[name](x)
    return x


class Pooler:
    """act(W h + b) (→ LayerNorm) on the first token of each sequence, or on the mean of its tokens."""

    def __init__(self, task: TaskConfig, tensors: dict[str, np.ndarray]) -> None:
        self.dense = Linear(tensors, "head.pooler")
        self.activation = task.pooler_activation
        self.norm = None
        if task.pooler_norm_eps is not None:
            self.norm = Norm(tensors, "head.pooler_norm", "layernorm", task.pooler_norm_eps)
        self.mean = task.pooling == "mean"

    def __call__(self, hidden: np.ndarray, starts: np.ndarray, key_mask: np.ndarray | None = None) -> np.ndarray:
        return self.transform(pool_tokens(hidden, starts, key_mask) if self.mean
                              else np.ascontiguousarray(hidden[starts[:-1]]))

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """The dense layer, activation and norm on the given rows."""
        x = _activate(self.dense(np.ascontiguousarray(rows)), self.activation)
        return x if self.norm is None else self.norm(x, out=x)


def pool_tokens(hidden: np.ndarray, starts: np.ndarray, key_mask: np.ndarray | None) -> np.ndarray:
    """The mean of each sequence's tokens, padding (key_mask 0) left out, as transformers' masked mean."""
    if key_mask is None or key_mask.all():
        return pool_segments(hidden, starts, "mean")
    weights = key_mask.astype(np.float64)[:, None]
    summed = np.add.reduceat(hidden * weights, starts[:-1], axis=0)
    return (summed / np.maximum(np.add.reduceat(weights, starts[:-1], axis=0), 1)).astype(np.float32)


class MaskedLMHead:
    """Vocabulary logits: decoder(LayerNorm(act(W h + b))) (+ bias); the decoder may be embed.tokens."""

    def __init__(self, task: TaskConfig, tensors: dict[str, np.ndarray]) -> None:
        self.dense = Linear(tensors, "head.mlm.dense")
        self.activation = task.mlm_activation
        self.norm = Norm(tensors, "head.mlm.norm", "layernorm", task.mlm_norm_eps)
        self.decoder = Linear(tensors, "head.mlm.decoder",
                              weight_name="embed.tokens" if task.mlm_tied else None)

    def __call__(self, hidden_rows: np.ndarray) -> np.ndarray:
        x = _activate(self.dense(np.ascontiguousarray(hidden_rows)), self.activation)
        return self.decoder(self.norm(x, out=x))


class TaskHead:
    """The head a file carries; each method raises nothing and expects validated packed inputs."""

    def __init__(self, cfg: EncoderConfig, task: TaskConfig, tensors: dict[str, np.ndarray]) -> None:
        self.task = task
        self.pooler = Pooler(task, tensors) if task.pooler_activation else None
        self.classifier = Linear(tensors, "head.classifier") if "head.classifier.weight" in tensors else None
        self.nsp = Linear(tensors, "head.nsp") if "head.nsp.weight" in tensors else None
        self.mlm = MaskedLMHead(task, tensors) if task.type in ("masked-lm", "pretraining") else None

    def sequence_logits(self, hidden: np.ndarray, starts: np.ndarray,
                        key_mask: np.ndarray | None = None) -> np.ndarray:
        """[B, labels] from the first token of each sequence, or the mean of its tokens (``key_mask``: 0 for
        padding rows), through the pooler where there is one."""
        x = self.pooler(hidden, starts, key_mask) if self.pooler else np.ascontiguousarray(hidden[starts[:-1]])
        return _finite(self.classifier(x))

    def token_logits(self, hidden: np.ndarray) -> np.ndarray:
        """[T, labels] (question answering: [T, 2] start and end logits), through the pooler on every token
        where there is one (ModernBERT)."""
        return _finite(self.classifier(self.pooler.transform(hidden) if self.pooler else hidden))

    def mlm_logits(self, hidden_rows: np.ndarray) -> np.ndarray:
        """[R, vocab] for the given rows only: fill-mask needs the masked positions, not all tokens."""
        return _finite(self.mlm(hidden_rows))

    def nsp_logits(self, hidden: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """[B, 2]: index 0 = "B follows A", as transformers' BertForPreTraining."""
        return _finite(self.nsp(self.pooler(hidden, starts)))
