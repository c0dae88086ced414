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


class ProcessError(TinyBertError):
    """tinybert cannot run in this process: it is a child forked after its parent ran tinybert's parallel
    kernels, whose OpenMP worker threads do not exist in a forked child (it would hang or be killed).
    Start worker processes with the "spawn" or "forkserver" method, or fork before the first call."""


class NumericalError(ModelFileError):
    """The model computed infinite or NaN values: its weights (valid in shape and finite, but out of any
    sane range, e.g. a hostile or damaged file) overflow float32. Raised instead of returning them."""


def check_finite(values: object, what: str) -> None:
    """Raise NumericalError when ``values`` (a numpy array) holds an infinity or a NaN."""
    import numpy as np

    if not np.isfinite(values).all():
        raise NumericalError(f"the model computed non-finite values in its {what}: its weights overflow "
                             "float32 (a damaged or hostile file?)")
