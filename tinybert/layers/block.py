"""One Transformer block for every family; the differences are config data (config.BlockConfig):

    pre-norm  (GPT-2, Llama, T5):  x = x + attn(norm(x));  [x = x + cross(norm(x));]  x = x + mlp(norm(x))
    post-norm (BERT, BART, Marian): x = norm(x + attn(x)); [x = norm(x + cross(x));]  x = norm(x + mlp(x))
    pre-norm with post_norms (Gemma 3): x = x + post_norm(attn(norm(x)));  x = x + post_norm(mlp(norm(x)))

    mlp(x) = down(act(up(x)))   or, gated (SwiGLU, GEGLU):  down(act(gate(x)) · up(x))

The rows (attention.PackedRows or CachedRows) decide whether self-attention is bidirectional over packed
sequences or causal over the slot cache. x is updated in place: the stack owns it from the embeddings on.
"""

from __future__ import annotations

import numpy as np

from .. import format as fmt
from ..config import BlockConfig
from ..kernels.activations import KINDS, activate, gated
from .attention import CachedRows, CrossAttention, PackedRows, SelfAttention
from .linear import Linear
from .norm import Norm

FFN_ROWS = 256   # rows per FFN block: its 256 x intermediate hidden state (1.5-3 MB) stays in L2


class MLP:
    def __init__(self, cfg: BlockConfig, tensors: dict[str, np.ndarray], prefix: str) -> None:
        self.up = Linear(tensors, prefix + fmt.MLP_UP)
        self.down = Linear(tensors, prefix + fmt.MLP_DOWN)
        self.kind = KINDS.index(cfg.activation)
        self.gated = cfg.gated_mlp

    def linears(self) -> list[Linear]:
        return [self.up, self.down]

    def __call__(self, x: np.ndarray, rows: PackedRows | CachedRows, layer: int) -> np.ndarray:
        hidden = self.up(x, rows.threads)
        if self.gated:
            gate_up, hidden = hidden, np.empty((hidden.shape[0], hidden.shape[1] // 2), dtype=np.float32)
            gated(gate_up, hidden, self.kind)
            del gate_up
        else:
            activate(hidden, self.kind)
        return self.down(hidden, rows.threads)


class TransformerBlock:
    def __init__(self, cfg: BlockConfig, tensors: dict[str, np.ndarray], prefix: str, index: int) -> None:
        self.index = index
        self.pre_norm = cfg.pre_norm

        def norm(name: str) -> Norm | None:
            # A pre-norm block may lack a norm (ModernBERT's first layer: its embeddings end in one already).
            if cfg.pre_norm and prefix + name + ".weight" not in tensors:
                return None
            return Norm(tensors, prefix + name, cfg.norm, cfg.norm_eps)

        self.attn_norm, self.attn = norm(fmt.ATTN_NORM), SelfAttention(tensors, prefix, cfg)
        self.cross_norm, self.cross = None, None
        if cfg.cross_attention:
            self.cross_norm, self.cross = norm(fmt.CROSS_NORM), CrossAttention(tensors, prefix)
        self.mlp_norm, self.mlp = norm(fmt.MLP_NORM), MLP(cfg, tensors, prefix)
        self.attn_post_norm, self.mlp_post_norm = None, None
        if cfg.post_norms:
            self.attn_post_norm, self.mlp_post_norm = norm(fmt.ATTN_POST_NORM), norm(fmt.MLP_POST_NORM)

    def linears(self) -> list[Linear]:
        return self.attn.linears() + (self.cross.linears() if self.cross else []) + self.mlp.linears()

    def __call__(self, x: np.ndarray, rows: PackedRows | CachedRows) -> np.ndarray:
        """x float32 [N, H], one row per token of ``rows`` → x, updated in place."""
        self.residual(x, self.attn_norm, self.attn, rows, self.attn_post_norm)
        if self.cross is not None:
            self.residual(x, self.cross_norm, self.cross, rows)
        # The MLP is row-wise: run it over row blocks so that the [rows, intermediate] hidden state stays in
        # cache between the up GEMM, the activation and the down GEMM, instead of streaming a
        # [N, intermediate] array through memory three times. Each block updates its own rows of x.
        for r0 in range(0, x.shape[0], FFN_ROWS):
            self.residual(x[r0:r0 + FFN_ROWS], self.mlp_norm, self.mlp, rows, self.mlp_post_norm)
        return x

    def residual(self, x: np.ndarray, norm: Norm | None, sublayer, rows: PackedRows | CachedRows,
                 post_norm: Norm | None = None) -> None:
        if self.pre_norm:
            out = sublayer(x if norm is None else norm(x), rows, self.index)
            x += out if post_norm is None else post_norm(out, out=out)  # x = x + [post_norm](f(norm(x)))
        else:
            norm(sublayer(x, rows, self.index), residual=x, out=x)      # x = norm(x + f(x))
