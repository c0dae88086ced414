"""LayerNorm or RMSNorm, as the config says, with the residual add of post-norm blocks fused where a kernel has it."""

from __future__ import annotations

import numpy as np

from ..kernels.decoder import rms_norm
from ..kernels.norm import add_layer_norm, layer_norm


class Norm:
    def __init__(self, tensors: dict[str, np.ndarray], name: str, kind: str, eps: float) -> None:
        self.weight = tensors[name + ".weight"]
        # A LayerNorm without a bias (some checkpoints drop it) runs the same kernel with zeros.
        self.bias = None if kind == "rmsnorm" else tensors.get(name + ".bias", np.zeros_like(self.weight))
        self.eps = float(eps)

    def __call__(self, x: np.ndarray, residual: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """norm(x + residual) into ``out``; without ``out``, a new array (pre-norm: x stays the residual)."""
        out = np.empty_like(x) if out is None else out
        if self.bias is None:
            if residual is not None:
                x = x + residual
            rms_norm(x, self.weight, self.eps, out)
        elif residual is None:
            layer_norm(x, self.weight, self.bias, self.eps, out)
        else:
            add_layer_norm(x, residual, self.weight, self.bias, self.eps, out)
        return out
