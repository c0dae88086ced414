"""tinybert: CPU-first Transformer inference with int8 weights, Numba kernels and one-file models."""

__version__ = "0.1.0"

from .api.encoder import Encoder  # noqa: E402
from .api.generator import Generator  # noqa: E402
from .api.tasks import Classifier, FillMask, QuestionAnswerer, TokenClassifier  # noqa: E402
from .api.translator import Translator  # noqa: E402
from .api.warmup import kernels_ready, warmup  # noqa: E402
from .errors import (  # noqa: E402
    ConversionError,
    InputError,
    ModelFileError,
    ModelKindError,
    ProcessError,
    TinyBertError,
    UnsupportedModelError,
)

__all__ = ["Encoder", "Generator", "Translator", "Classifier", "TokenClassifier", "FillMask", "QuestionAnswerer",
           "TinyBertError", "ModelFileError", "ModelKindError", "UnsupportedModelError", "ConversionError",
           "InputError", "ProcessError", "warmup", "kernels_ready", "__version__"]
