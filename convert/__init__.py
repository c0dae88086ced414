"""tinybert's converter (import name ``tinybert_convert``): Hugging Face folder → one .safetensors file.

The only part of tinybert that knows Hugging Face weight names. Needs torch only for
``pytorch_model.bin`` inputs.
"""

from .convert import convert

__all__ = ["convert"]
