"""tinybert: CPU-first Transformer inference with int8 weights, Numba kernels and one-file models."""

from .api import Encoder
from .errors import (
    ConversionError,
    InputError,
    ModelFileError,
    TinyBertError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = ["Encoder", "TinyBertError", "ModelFileError", "UnsupportedModelError",
           "ConversionError", "InputError", "__version__"]
