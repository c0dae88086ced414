"""fp32 → int8 with one symmetric scale per row. Pure numpy, deterministic."""

from __future__ import annotations

import numpy as np

from tinybert import format as fmt


def quantize_per_row(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (q int8, scale float32) with ``w[r] ≈ q[r] * scale[r]`` and |q| <= 127.

    Symmetric (no zero point) so the runtime's integer dot products need no correction terms;
    127 rather than 128 keeps the range symmetric. A zero row gets scale 1 to stay finite.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError("quantize_per_row expects a 2-D array")
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale



def quantize_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor the format quantises as int8 + ``.scale``; the others as they are."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if fmt.is_quantized_name(name):
            out[name], out[name + fmt.SCALE_SUFFIX] = quantize_per_row(value)
        else:
            out[name] = value
    return out
