"""sentence-transformers' Dense modules (after pooling: x = act(W x + b)) → the file's ``dense`` layers.

A Dense module is a folder named in modules.json with its ``config.json`` (in_features, out_features, bias,
activation_function, and in newer releases module_input_name / module_output_name / use_residual) and its
weights ``linear.weight`` [out, in] / ``linear.bias`` [out] (model.safetensors, or pytorch_model.bin from older
releases). tinybert runs the activations of format.DENSE_ACTIVATIONS; anything else is refused rather than run
differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinybert import format as fmt
from tinybert.errors import ConversionError, UnsupportedModelError

from .files import read_json, source_file
from .readers import read_checkpoint

# activation_function as sentence-transformers saves it (the class's import path), by class name. An absent one is
# sentence-transformers' default, Tanh.
_ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh"}


def _activation(config: dict, source: str) -> str:
    path = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if not isinstance(path, str):
        raise ConversionError(f"{source}: activation_function must be a string")
    name = path.rsplit(".", 1)[-1]
    # Outside torch.nn, sentence-transformers runs the named code only with trust_remote_code (and Tanh without
    # it, warning): either way not a function tinybert knows.
    if not path.startswith("torch.") or name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"{source}: Dense activation_function {path[:100]!r} is not supported (only "
                                    f"torch's {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _size(config: dict, name: str, source: str) -> int:
    value = config.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2 ** 31:
        raise ConversionError(f"{source}: {name} must be a positive integer, got {str(value)[:60]}")
    return value


def dense_modules(folder: Path, paths: list[str], width: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The ``dense`` metadata (format.check_dense) and float32 tensors ``dense.i.weight`` / ``dense.i.bias`` of the
    Dense modules in ``paths`` (modules.json's order), for pooled vectors of ``width`` values.

    UnsupportedModelError for what tinybert does not run (another activation, a residual connection, a module
    reading or writing other features than the sentence embedding); ConversionError for a module that does not
    fit (missing files or tensors, shapes other than its config's, an input width other than the vector's)."""
    if len(paths) > fmt.MAX_DENSE:
        raise UnsupportedModelError(f"{folder}: more than {fmt.MAX_DENSE} Dense modules")
    layers: list[dict] = []
    tensors: dict[str, np.ndarray] = {}
    pooled_width = width
    for i, path in enumerate(paths):
        name = f"{path}/config.json" if path else "config.json"
        source = str(folder / name)
        if not source_file(folder, name).is_file():
            raise ConversionError(f"{source}: Dense config named in modules.json is missing")
        config = read_json(folder, name, dict)
        if config.get("use_residual", False) is not False:
            raise UnsupportedModelError(f"{source}: Dense use_residual is not supported")
        for key in ("module_input_name", "module_output_name"):
            if config.get(key) not in (None, "sentence_embedding"):
                raise UnsupportedModelError(f"{source}: a Dense module on {str(config[key])[:60]!r} is not supported "
                                            "(only on the pooled sentence_embedding)")
        activation = _activation(config, source)
        bias = config.get("bias", True)
        if not isinstance(bias, bool):
            raise ConversionError(f"{source}: bias must be true or false")
        in_features, out_features = _size(config, "in_features", source), _size(config, "out_features", source)
        if in_features != width:
            raise ConversionError(f"{source}: in_features {in_features} does not fit the {width} values before it")
        weights = read_checkpoint(source_file(folder, path) if path else folder)
        expected = {"linear.weight": (out_features, in_features), **({"linear.bias": (out_features,)} if bias else {})}
        for key, shape in expected.items():
            if key not in weights:
                raise ConversionError(f"{folder / path}: Dense weights have no {key}")
            if weights[key].shape != shape:
                raise ConversionError(f"{folder / path}: {key} has shape {weights[key].shape}, its config implies "
                                      f"{shape}")
        prefix = fmt.dense_prefix(i)
        tensors[prefix + ".weight"] = np.ascontiguousarray(weights["linear.weight"], dtype=np.float32)
        tensors[prefix + ".bias"] = np.ascontiguousarray(weights["linear.bias"], dtype=np.float32) if bias \
            else np.zeros(out_features, dtype=np.float32)
        layers.append({"in_features": in_features, "out_features": out_features, "activation": activation})
        width = out_features
    problem = fmt.check_dense(layers, pooled_width)
    if problem:
        raise ConversionError(f"{folder}: Dense modules: {problem}")
    return layers, tensors
