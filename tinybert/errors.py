"""The exceptions tinybert raises on bad input. Catch ``TinyBertError`` to catch them all."""


class TinyBertError(Exception):
    """Base class of every error tinybert raises on purpose."""


class ModelFileError(TinyBertError):
    """A model file is missing, truncated, corrupted, of another format version or inconsistent."""


class UnsupportedModelError(TinyBertError):
    """The checkpoint's architecture or a feature of its config is not supported."""


class ConversionError(TinyBertError):
    """A Hugging Face checkpoint folder cannot be converted (missing files, bad shapes, ...)."""


class InputError(TinyBertError, ValueError):
    """Bad arguments to the API: empty input, token ids out of range, wrong shapes or dtypes."""


class ModelKindError(TinyBertError):
    """The file holds another kind of model or head than the class asked for (for example a
    Classifier on a file converted from a base model without a classification head)."""
