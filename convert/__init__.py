"""tinybert's converter (import name ``tinybert_convert``): Hugging Face folder → one .safetensors file.

The only part of tinybert that knows Hugging Face weight names. Needs torch only for
``pytorch_model.bin`` inputs.
"""

from .convert import convert

CONVERTER_VERSION = 2
"""Raised whenever a conversion's output changes (new metadata, different quantisation or calibration): the
runtime's cache of converted models (tinybert/api/resolve.py) keys its entries on it."""

__all__ = ["CONVERTER_VERSION", "convert"]
